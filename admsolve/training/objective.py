"""The loss of one training step: partial cross-entropy on the scribbles, plus, in the regularized
phase, the regularizer's relaxation (GD, loss (4)) or the proximal term towards ADM's latent labeling
(eq. 7, after the latent step of eq. 8)."""

from __future__ import annotations

import numpy as np
import torch

from .._validation import UNLABELED
from .adm import ADMStep
from .config import TrainConfig
from .distributed import Processes
from .losses import argmax_labels, partial_cross_entropy, proximal_loss
from .regularizers import REGULARIZERS


class Objective:
    """The terms of a run's loss in each phase ("pce" or "regularized").

    Attributes
    ----------
    adm_step : ADMStep or None
        The latent step, for ADM with a regularizer.
    diagnostics : dict
        After a regularized ADM step: ``latent_start_energy`` and ``latent_energy`` (eq. 8 per valid
        pixel at the solver's start, argmax S by default, and at X, over the batch; per coarse pixel
        of the coarse problem with ``latent_stride`` > 1), ``latent_changed`` (share of unscribbled
        valid pixels where X differs from argmax S) and ``confidence`` (mean of max_k S over them).
    """

    def __init__(self, config: TrainConfig, processes: Processes | None = None) -> None:
        self.config = config = config.resolved()  # lam and gamma as the run uses them
        self.processes = Processes() if processes is None else processes
        self.regularizer = REGULARIZERS[config.regularizer]
        self.settings = {name: getattr(config, name) for name in self.regularizer.settings}
        self.adm_step = None
        self.diagnostics: dict[str, float] = {}
        self.gamma = config.gamma
        self.proximal_weight = config.gamma if config.proximal_weight is None else config.proximal_weight
        self.workers = config.workers or self.processes.solver_threads  # CPU threads beside torch's
        if config.optimizer == "adm" and self.regularizer.latent_problem is not None:
            self.adm_step = ADMStep(lam=config.weight, gamma=config.gamma, regularizer=config.regularizer,
                                    connectivity=config.connectivity, sxy=config.sxy, srgb=config.srgb,
                                    backend=config.backend, restrict_labels=config.restrict_labels,
                                    latent_stride=config.latent_stride, latent_init=config.latent_init,
                                    workers=self.workers,
                                    max_iter=config.max_iter)

    def begin_epoch(self, regularized_epoch: int) -> None:
        """Set ADM's gamma for the regularized phase's epoch `regularized_epoch` (1-based):
        ``gamma * gamma_growth ** (regularized_epoch - 1)``, and the proximal term's weight with it
        (``proximal_weight`` grows by the same factor where it is set)."""
        growth = self.config.gamma_growth ** max(regularized_epoch - 1, 0)
        self.gamma = self.config.gamma * growth
        self.proximal_weight = self.gamma if self.config.proximal_weight is None else self.config.proximal_weight * growth
        if self.adm_step is not None:
            self.adm_step.gamma = self.gamma

    def __call__(self, phase: str, logits: torch.Tensor, images: np.ndarray | torch.Tensor,
                 scribbles: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
        """The terms of the loss of one step: a dict of scalar tensors, "loss" being their sum.
        `valid` (N, H, W) bool marks the pixels of the photographs: crop padding (False) takes no
        part in the regularizer, the latent step or the proximal term, whose means divide by the
        valid pixels (unless ``padding_in_losses``, the behaviour before the mask existed).
        ``self.diagnostics`` then holds the latent step's measures (empty without one)."""
        self.diagnostics = {}
        if self.config.padding_in_losses:
            valid = None
        terms = {"pce": self._partial_cross_entropy(logits, scribbles)}
        if phase == "regularized":
            if self.adm_step is not None and not bool(torch.isfinite(logits).all()):
                # the latent step needs finite probabilities: a non-finite term, so that the loop stops,
                # saves the network and reports the step, as for any diverged loss
                terms["proximal"] = logits.sum() * float("nan")
            elif self.adm_step is not None:
                latent = self.adm_step(logits.detach().softmax(1), images, scribbles, valid)
                terms["proximal"] = proximal_loss(logits, latent, scribbles, gamma=self.proximal_weight, roi=valid,
                                                  reduction="mean")
                self.diagnostics = self._latent_diagnostics(logits, latent, scribbles, valid)
            else:
                terms[self.regularizer.term] = self.regularizer.relaxed_loss(
                    logits.softmax(1), images, lam=self.config.weight, workers=self.workers, roi=valid, **self.settings)
        terms["loss"] = sum(terms.values())
        return terms

    def _partial_cross_entropy(self, logits, scribbles):
        """The mean cross-entropy over the scribbled pixels of the global batch: this process's sum
        divided by the count over every process, times their number (DistributedDataParallel
        averages the gradients), so that any number of processes computes the one-process loss. A
        batch without a scribbled pixel gives 0 (a crop can miss every scribble; the regularizer
        still applies)."""
        total = partial_cross_entropy(logits, scribbles, reduction="sum")
        count = self.processes.sum(float((scribbles != UNLABELED).sum()))
        return total * (self.processes.world_size / count) if count else logits.sum() * 0.0

    def _latent_diagnostics(self, logits, latent, scribbles, valid):
        """How the latent step moved away from the network (issue 11's diagnosis), per valid pixel:
        the eq. 8 energy of its start and of X, and the share of unscribbled valid pixels where X
        differs from argmax S. With ``latent_stride`` s > 1 the energies are those of the coarse
        problem per coarse pixel, which the regularizer's ``coarsen`` keeps on the scale of the
        full-resolution figures; the share is counted at full resolution, so it includes the blocks
        of the upsampled X."""
        results = self.adm_step.results
        pixels = sum(self.adm_step.problem_pixels)
        free = scribbles == UNLABELED
        if valid is not None:
            free &= valid
        changed = (latent != argmax_labels(logits.detach())) & free
        confidence = logits.detach().float().softmax(1).amax(1)[free]
        return {"latent_start_energy": sum(r.history[0] for r in results) / pixels,
                "latent_energy": sum(r.energy for r in results) / pixels,
                "latent_changed": float(changed.sum()) / max(float(free.sum()), 1.0),
                "confidence": float(confidence.mean()) if confidence.numel() else 1.0}

    def solver_time(self) -> float:
        """Seconds the backend spent in the last latent step (0 without one): summed over the solver threads,
        and with the compiled latent step (numba-expansion) including the building of the problems."""
        return sum(result.time for result in self.adm_step.results) if self.adm_step is not None else 0.0
