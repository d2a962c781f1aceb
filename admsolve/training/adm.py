"""The latent step of ADM (Algorithm 1 of the paper): for each image of a batch, the discrete
labeling X that minimises eq. 8 — lam * R(X) + gamma * KL(X || S) — with the scribbles as hard
constraints. R is the grid CRF (contrast-weighted Potts, any GridCRF backend) or the dense CRF
(bilateral Potts, solved by mean-field). With ``latent_stride`` s > 1 eq. 8 is solved on a grid 1/s
of the image's in each direction (:func:`block_probabilities`, :func:`block_mean`,
:func:`block_seeds`) and X upsampled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import UNLABELED, as_connectivity, as_positive, as_scalar
from ..backends import lookup
from ..energies.problem import LabelingProblem
from ..energies.unaries import adm_unary
from ..solve import SolveResult, solve_batch
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
    latent_stride : int, optional
        1 (the default): eq. 8 at full resolution, the paper's algorithm. s > 1: eq. 8 on the grid of
        s x s blocks (partial blocks at the right and bottom edges included): S and the image are
        averaged per block (:func:`block_probabilities`, :func:`block_mean`), so the contrast
        weights and their Boykov-Jolly sigma come from the downscaled image; a block is seeded with
        the most frequent scribbled label among its pixels (:func:`block_seeds`); the warm start is
        argmax of the pooled S. The regularizer's ``coarsen`` keeps the coarse energy times s² close
        to the fine energy of the upsampled labeling: the grid CRF takes ``lam / s`` (a block border
        is one coarse edge where the image has s; the unary of a block is the mean, not the sum, of
        its s² pixels'), the dense CRF ``sxy / s`` (same image area; its normalised kernel needs no
        change of lam). X is upsampled by repetition to the full size and set to the scribbles on
        every scribbled pixel, so the hard constraints hold at full resolution; ``results`` and
        :meth:`problems` are those of the coarse problems.
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
                 restrict_labels: bool = False, latent_stride: int = 1, workers: int | None = None,
                 ignore_index: int = UNLABELED, **solver_options: Any) -> None:
        self.lam = as_scalar(lam, "lam", minimum=0.0)
        self.gamma = as_scalar(gamma, "gamma", minimum=0.0)
        self.regularizer = lookup_regularizer(regularizer)
        if self.regularizer.latent_problem is None or self.regularizer.problem is None:
            raise ValueError(f"regularizer: expected one with a latent problem for ADM, got {regularizer!r}")
        self.settings = {"connectivity": as_connectivity(connectivity), "sxy": as_positive(sxy, "sxy"),
                         "srgb": as_positive(srgb, "srgb")}
        kind = self.regularizer.problem
        if isinstance(backend, str) and not issubclass(kind, lookup(backend).problem):
            raise ValueError(f"backend: expected a backend that solves a {kind.__name__} (the {regularizer} "
                             f"regularizer), got {backend!r} (it solves {lookup(backend).problem.__name__})")
        self.backend, self.workers = backend, workers
        self.restrict_labels = bool(restrict_labels)
        self.latent_stride = as_scalar(latent_stride, "latent_stride", minimum=1, integer=True)
        if self.latent_stride > 1 and self.regularizer.coarsen is None:
            raise ValueError(f"latent_stride: expected 1 with the {regularizer} regularizer (it has no coarse "
                             f"latent problem), got {latent_stride!r}")
        self.ignore_index = _check_ignore_index(ignore_index)
        self.solver_options = solver_options
        self.results: list[SolveResult] = []

    def problems(self, probs: torch.Tensor, images: np.ndarray | torch.Tensor,
                 scribbles: torch.Tensor) -> list[LabelingProblem]:
        """The eq. 8 problem of each image, as solved (on the coarse grid when ``latent_stride`` > 1):
        a ``list`` of the regularizer's problem class.

        probs : (N, K, H, W) tensor of softmax probabilities (detached here); images : (N, H, W, 3)
        array or (N, 3, H, W) tensor; scribbles : (N, H, W) int64 tensor, `ignore_index` unscribbled.
        """
        return self._problems(*self._latent_inputs(probs, images, scribbles))

    def _latent_inputs(self, probs, images, scribbles):
        """S as (N, h, w, K) float64, the N (h, w, 3) images and the (N, h, w) seeds on the latent grid."""
        probs = _check_float_tensor(probs, "probs")
        n, n_labels, height, width = probs.shape
        scribbles = _check_labels(scribbles, "scribbles", (n, height, width), n_labels, self.ignore_index)
        pictures = _images_as_numpy(images, (n, height, width))
        seeds = scribbles.cpu().numpy()
        stride = self.latent_stride
        if stride == 1:
            soft = probs.detach().cpu().to(torch.float64).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
            return soft, pictures, seeds
        # pooled where S is (on its device, in its precision) before anything full-size is copied
        soft = block_probabilities(probs.detach().clamp(0.0, 1.0), stride)
        pictures = block_mean(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2), stride)
        return soft, pictures.permute(0, 2, 3, 1).numpy(), block_seeds(seeds, stride, n_labels, self.ignore_index)

    def _problems(self, soft, pictures, seeds):
        lam = self.lam
        settings = {name: self.settings[name] for name in self.regularizer.settings}
        if self.latent_stride > 1:
            lam, settings = self.regularizer.coarsen(self.latent_stride, lam, settings)
        return [self.regularizer.latent_problem(adm_unary(soft[i], gamma=self.gamma), pictures[i], seeds[i],
                                                lam=lam, unlabeled=self.ignore_index, **settings)
                for i in range(len(soft))]

    def __call__(self, probs: torch.Tensor, images: np.ndarray | torch.Tensor, scribbles: torch.Tensor) -> torch.Tensor:
        """Latent labels X: an int64 (N, H, W) tensor on `probs`' device, scribbles respected."""
        soft, pictures, seeds = self._latent_inputs(probs, images, scribbles)
        problems = self._problems(soft, pictures, seeds)
        inits = list(soft.argmax(-1))  # argmax S (pooled on the latent grid), the warm start
        per_problem = None
        if self.restrict_labels:
            per_problem = [{"labels": np.union1d(np.unique(init), np.unique(seed[seed != self.ignore_index]))}
                           for init, seed in zip(inits, seeds)]
        self.results = solve_batch(problems, self.backend, workers=self.workers, inits=inits,
                                   problem_options=per_problem, **self.solver_options)
        latent = np.stack([result.labels for result in self.results]).astype(np.int64)
        if self.latent_stride > 1:
            latent = upsample_labels(latent, self.latent_stride, (scribbles.shape[1], scribbles.shape[2]))
            full = scribbles.cpu().numpy()
            latent = np.where(full != self.ignore_index, full, latent)  # the hard constraints, at full resolution
        return torch.from_numpy(latent).to(probs.device)


def block_mean(values: torch.Tensor, stride: int) -> torch.Tensor:
    """The mean of (N, C, H, W) `values` over s x s blocks of pixels: (N, C, ceil(H/s), ceil(W/s)), of
    their dtype (float32 at least) and device. A partial block at the right or bottom edge averages the
    pixels it has (``avg_pool2d`` in ceil mode without padding divides by the pixels inside the input)."""
    values = values.to(torch.promote_types(values.dtype, torch.float32))
    return torch.nn.functional.avg_pool2d(values, stride, ceil_mode=True)


def block_probabilities(probs: torch.Tensor, stride: int) -> np.ndarray:
    """(N, K, H, W) probabilities averaged over s x s blocks (:func:`block_mean`) and renormalised in
    float64, so that each block's sum to 1 (they do up to rounding when each pixel's do; a block of
    zeros stays zero): an (N, ceil(H/s), ceil(W/s), K) float64 array."""
    pooled = block_mean(probs, stride).cpu().to(torch.float64).permute(0, 2, 3, 1).numpy()
    total = pooled.sum(axis=-1, keepdims=True)
    return np.divide(pooled, total, out=pooled, where=total > 0)


def block_seeds(seeds: np.ndarray, stride: int, n_labels: int, unlabeled: int = UNLABELED) -> np.ndarray:
    """The seeds of the s x s blocks of (N, H, W) `seeds`: (N, ceil(H/s), ceil(W/s)) int64, the most
    frequent scribbled label among a block's pixels (the smallest on a tie), `unlabeled` where the
    block has no scribbled pixel."""
    n, height, width = seeds.shape
    rows, cols = -(-height // stride), -(-width // stride)
    image, y, x = np.nonzero(seeds != unlabeled)  # the scribbled pixels, counted per block and label
    block = (image * rows + y // stride) * cols + x // stride
    counts = np.bincount(block * n_labels + seeds[image, y, x], minlength=n * rows * cols * n_labels)
    counts = counts.reshape(n, rows, cols, n_labels)
    return np.where(counts.any(axis=-1), counts.argmax(axis=-1), unlabeled)


def upsample_labels(labels: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """(N, h, w) block labels repeated s times along each axis and cropped to `shape` (H, W)."""
    height, width = shape
    return labels.repeat(stride, axis=1).repeat(stride, axis=2)[:, :height, :width]
