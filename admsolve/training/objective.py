"""The loss of one training step: partial cross-entropy on the scribbles, plus, in the regularized
phase, the regularizer's relaxation (GD, loss (4)) or the proximal term towards ADM's latent labeling
(eq. 7, after the latent step of eq. 8)."""

from __future__ import annotations

import torch

from .._validation import UNLABELED
from .adm import ADMStep
from .config import TrainConfig
from .losses import partial_cross_entropy, proximal_loss
from .regularizers import REGULARIZERS


class Objective:
    """The terms of a run's loss in each phase ("pce" or "regularized").

    Attributes
    ----------
    adm_step : ADMStep or None
        The latent step, for ADM with a regularizer.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.regularizer = REGULARIZERS[config.regularizer]
        self.settings = {name: getattr(config, name) for name in self.regularizer.settings}
        self.adm_step = None
        if config.optimizer == "adm" and self.regularizer.latent_problem is not None:
            self.adm_step = ADMStep(lam=config.weight, gamma=config.gamma, regularizer=config.regularizer,
                                    connectivity=config.connectivity, sxy=config.sxy, srgb=config.srgb,
                                    backend=config.backend, restrict_labels=config.restrict_labels,
                                    workers=config.workers, max_iter=config.max_iter)

    def __call__(self, phase: str, logits: torch.Tensor, images, scribbles: torch.Tensor) -> dict:
        """The terms of the loss of one step: a dict of scalar tensors, "loss" being their sum."""
        if bool((scribbles != UNLABELED).any()):
            terms = {"pce": partial_cross_entropy(logits, scribbles)}
        else:  # a crop can miss every scribble; the regularizer still applies
            terms = {"pce": logits.sum() * 0.0}
        if phase == "regularized":
            if self.adm_step is not None and not bool(torch.isfinite(logits).all()):
                # the latent step needs finite probabilities: a non-finite term, so that the loop stops,
                # saves the network and reports the step, as for any diverged loss
                terms["proximal"] = logits.sum() * float("nan")
            elif self.adm_step is not None:
                latent = self.adm_step(logits.detach().softmax(1), images, scribbles)
                pixels = logits.shape[2] * logits.shape[3]
                terms["proximal"] = proximal_loss(logits, latent, scribbles, gamma=self.config.gamma) / pixels
            else:
                terms[self.regularizer.term] = self.regularizer.relaxed_loss(logits.softmax(1), images,
                                                                             lam=self.config.weight, **self.settings)
        terms["loss"] = sum(terms.values())
        return terms

    def solver_time(self) -> float:
        """Seconds the backend spent in the last latent step (0 without one)."""
        return sum(result.time for result in self.adm_step.results) if self.adm_step is not None else 0.0
