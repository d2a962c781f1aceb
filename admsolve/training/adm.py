"""The latent step of ADM (Algorithm 1 of the paper): for each image of a batch, the discrete
labeling X that minimises eq. 8 — lam * R(X) + gamma * KL(X || S) — with the scribbles as hard
constraints. R is the grid CRF (contrast-weighted Potts, any GridCRF backend) or the dense CRF
(bilateral Potts, solved by mean-field)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import UNLABELED, as_connectivity, as_positive, as_scalar
from ..backends import lookup
from ..energies.problem import LabelingProblem
from ..energies.unaries import adm_unary
from ..solve import solve_batch
from .losses import _check_float_tensor, _check_ignore_index, _check_labels, _images_as_numpy
from .regularizers import lookup_regularizer


class ADMStep:
    """Solve eq. 8 for every image of a batch and return the latent labels X.

    Parameters
    ----------
    lam : float, optional
        Weight of the regularizer R.
    gamma : float, optional
        Weight of the divergence term: unaries ``-gamma * log S``.
    regularizer : {"grid", "dense"} or another entry of ``REGULARIZERS`` with a latent problem, optional
        "grid": R is the grid CRF with contrast weights (Boykov-Jolly sigma^2 per image), the
        relaxation of which is :func:`~admsolve.training.grid_crf_loss`. "dense": R is the bilateral
        dense CRF of :func:`~admsolve.training.dense_crf_loss` (``compat = 2 * lam``, no Gaussian
        kernel), whose latent problem ``mean-field`` solves.
    connectivity : {4, 8}, optional
        Grid neighbourhood (grid regularizer).
    sxy, srgb : float, optional
        Bilateral kernel widths (dense regularizer).
    backend : str, optional
        A backend that solves the regularizer's problem; default: the first usable one
        ("numba-expansion" for the grid CRF). "maxflow", "numba-swap", "numba-icm", "relaxed-gd" swap
        the optimizer of the grid latent step; a callable backend (see :func:`admsolve.solve`) works too.
    restrict_labels : bool, optional
        Expansion and swap move only to the labels of the image's scribbles and of argmax S (the
        labels X can take from its warm start anyway), instead of all K.
    workers : int, optional
        Parallel solves, as in :func:`admsolve.solve_batch` (threads for the Numba backends).
    ignore_index : int, optional
        The value of unscribbled pixels in `scribbles`.
    **solver_options
        Passed to the backend, e.g. ``max_iter=5`` (the paper's setting: 5 sweeps of expansion).

    Each solve starts from argmax S (seeds applied), a warm start close to the answer. The solver
    results of the last call are kept in ``self.results`` (energies, times).

    Examples
    --------
    >>> step = ADMStep(lam=2.0, gamma=1.0, max_iter=5)                 # doctest: +SKIP
    >>> latent = step(logits.softmax(1), images, scribbles)           # doctest: +SKIP
    >>> loss = proximal_loss(logits, latent, scribbles, gamma=1.0)    # doctest: +SKIP
    """

    def __init__(self, *, lam: float = 2.0, gamma: float = 1.0, regularizer: str = "grid", connectivity: int = 8,
                 sxy: float = 80, srgb: float = 13, backend: str | Callable[..., dict] | None = None,
                 restrict_labels: bool = False, workers: int | None = None, ignore_index: int = UNLABELED,
                 **solver_options: Any) -> None:
        self.lam = as_scalar(lam, "lam", minimum=0.0)
        self.gamma = as_scalar(gamma, "gamma", minimum=0.0)
        self.regularizer = lookup_regularizer(regularizer)
        if self.regularizer.latent_problem is None:
            raise ValueError(f"regularizer: expected one with a latent problem for ADM, got {regularizer!r}")
        self.settings = {"connectivity": as_connectivity(connectivity), "sxy": as_positive(sxy, "sxy"),
                         "srgb": as_positive(srgb, "srgb")}
        kind = self.regularizer.problem
        if isinstance(backend, str) and not issubclass(kind, lookup(backend).problem):
            raise ValueError(f"backend: expected a backend that solves a {kind.__name__} (the {regularizer} "
                             f"regularizer), got {backend!r} (it solves {lookup(backend).problem.__name__})")
        self.backend, self.workers = backend, workers
        self.restrict_labels = bool(restrict_labels)
        self.ignore_index = _check_ignore_index(ignore_index)
        self.solver_options = solver_options
        self.results = []

    def problems(self, probs: torch.Tensor, images: np.ndarray | torch.Tensor,
                 scribbles: torch.Tensor) -> list[LabelingProblem]:
        """The eq. 8 problem of each image: a ``list`` of the regularizer's problem class.

        probs : (N, K, H, W) tensor of softmax probabilities (detached here); images : (N, H, W, 3)
        array or (N, 3, H, W) tensor; scribbles : (N, H, W) int64 tensor, `ignore_index` unscribbled.
        """
        probs = _check_float_tensor(probs, "probs")
        n, n_labels, height, width = probs.shape
        scribbles = _check_labels(scribbles, "scribbles", (n, height, width), n_labels, self.ignore_index)
        pictures = _images_as_numpy(images, (n, height, width))
        soft = probs.detach().cpu().to(torch.float64).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
        seeds = scribbles.cpu().numpy()
        settings = {name: self.settings[name] for name in self.regularizer.settings}
        return [self.regularizer.latent_problem(adm_unary(soft[i], gamma=self.gamma), pictures[i], seeds[i],
                                                lam=self.lam, unlabeled=self.ignore_index, **settings)
                for i in range(n)]

    def __call__(self, probs: torch.Tensor, images: np.ndarray | torch.Tensor, scribbles: torch.Tensor) -> torch.Tensor:
        """Latent labels X: an int64 (N, H, W) tensor on `probs`' device, scribbles respected."""
        problems = self.problems(probs, images, scribbles)
        inits = list(probs.detach().argmax(1).cpu().numpy())  # argmax S, the warm start
        per_problem = None
        if self.restrict_labels:
            seeds = scribbles.cpu().numpy()
            per_problem = [{"labels": np.union1d(np.unique(init), np.unique(seed[seed != self.ignore_index]))}
                           for init, seed in zip(inits, seeds)]
        self.results = solve_batch(problems, self.backend, workers=self.workers, inits=inits,
                                   problem_options=per_problem, **self.solver_options)
        return torch.from_numpy(np.stack([result.labels for result in self.results]).astype(np.int64)).to(probs.device)
