"""The latent step of ADM (Algorithm 1 of the paper): for each image of a batch, the discrete
labeling X that minimises eq. 8 — lam * R(X) + gamma * KL(X || S) — with the scribbles as hard
constraints. R is the grid CRF (contrast-weighted Potts, any GridCRF backend) or the dense CRF
(bilateral Potts, solved by mean-field). With ``latent_stride`` s > 1 eq. 8 is solved on a grid 1/s
of the image's in each direction (:func:`block_probabilities`, :func:`block_mean`,
:func:`block_seeds`) and X upsampled."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from .._validation import UNLABELED, as_connectivity, as_positive, as_scalar
from ..backends import CANCEL, check_cancelled, load, lookup
from ..energies.gridcrf import N_DIRECTIONS
from ..energies.problem import ENERGY_LIMIT, LabelingProblem
from ..energies.unaries import ADM_EPS, adm_unary
from ..solve import SolveResult, check_options, in_shares, solve_batch, stop_message
from .losses import _check_float_tensor, _check_ignore_index, _check_labels, _describe, _images_as_numpy, argmax_labels
from .config import LATENT_INITS
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
    latent_init : {"argmax", "label-0"}, optional
        The labeling each solve starts from (scribbles applied): "argmax" S (pooled on the latent
        grid), a warm start close to the answer; "label-0", every pixel label 0 (gco's default, the
        start of the authors' code).
    workers : int, optional
        Parallel solves, as in :func:`admsolve.solve_batch` (threads for the Numba backends).
    ignore_index : int, optional
        The value of unscribbled pixels in `scribbles`.
    **solver_options
        Passed to the backend, e.g. ``max_iter=5`` (the paper's setting: 5 sweeps of expansion).

    Pixels outside the `valid` mask of a call (crop padding) take no part: each image's problem is
    built on the bounding box of its valid pixels (a padded crop's photograph exactly), and inside
    that box the grid problem cuts the others off (no edges, no unary cost). The solver results of
    the last call are kept in ``self.results`` (energies, times) and the valid pixels of each
    problem in ``self.problem_pixels``.

    Examples
    --------
    >>> step = ADMStep(lam=2.0, gamma=1.0, max_iter=5)                 # doctest: +SKIP
    >>> latent = step(logits.softmax(1), images, scribbles)           # doctest: +SKIP
    >>> loss = proximal_loss(logits, latent, scribbles, gamma=1.0)    # doctest: +SKIP
    """

    def __init__(self, *, lam: float = 2.0, gamma: float = 1.0, regularizer: str = "grid", connectivity: int = 8,
                 sxy: float = 80, srgb: float = 13, backend: str | Callable[..., dict] | None = None,
                 restrict_labels: bool = False, latent_stride: int = 1, latent_init: str = "argmax",
                 workers: int | None = None, ignore_index: int = UNLABELED, **solver_options: Any) -> None:
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
        if latent_init not in LATENT_INITS:
            raise ValueError(f"latent_init: expected one of {', '.join(LATENT_INITS)}, got {latent_init!r}")
        self.latent_init = latent_init
        self.ignore_index = _check_ignore_index(ignore_index)
        self.solver_options = solver_options
        self.results: list[SolveResult] = []
        self.problem_pixels: list[int] = []

    def problems(self, probs: torch.Tensor, images: np.ndarray | torch.Tensor, scribbles: torch.Tensor,
                 valid: torch.Tensor | None = None) -> list[LabelingProblem]:
        """The eq. 8 problem of each image, as solved (on the coarse grid when ``latent_stride`` > 1,
        on the bounding box of the valid pixels): a ``list`` of the regularizer's problem class.

        probs : (N, K, H, W) tensor of softmax probabilities (detached here); images : (N, H, W, 3)
        array or (N, 3, H, W) tensor; scribbles : (N, H, W) int64 tensor, `ignore_index` unscribbled;
        valid : (N, H, W) bool tensor, the pixels that take part (False on crop padding), or None
        (every pixel).
        """
        return self._problems(self._latent_inputs(self._checked(probs, images, scribbles, valid)))

    def _checked(self, probs, images, scribbles, valid):
        """The inputs of a call, checked: (probs, images as an (N, H, W, 3) float64 array, the scribbles as
        an int64 array, the valid masks as a bool array or None, each image's bounding box of valid pixels)."""
        probs = _check_float_tensor(probs, "probs")
        n, n_labels, height, width = probs.shape
        scribbles = _check_labels(scribbles, "scribbles", (n, height, width), n_labels, self.ignore_index)
        pictures = _images_as_numpy(images, (n, height, width))
        masks = None if valid is None else _check_valid(valid, (n, height, width)).cpu().numpy()
        boxes = [(slice(None), slice(None))] * n if masks is None else \
            [_bounding_box(mask, i) for i, mask in enumerate(masks)]
        return _Checked(probs, pictures, scribbles.cpu().numpy(), masks, boxes)

    def _latent_inputs(self, checked):
        """Each image's eq. 8 inputs (:class:`_Latent`) on the latent grid, cut to the bounding box of
        its valid pixels."""
        probs, pictures, seeds, masks, boxes = checked
        n_labels = probs.shape[1]
        stride = self.latent_stride
        if stride == 1:
            soft = probs.detach().cpu().to(torch.float64).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
        inputs = []
        for i, box in enumerate(boxes):
            mask = None if masks is None or masks[i][box].all() else masks[i][box]
            if stride == 1:
                inputs.append(_Latent(soft[i][box], pictures[i][box], seeds[i][box], mask, box))
                continue
            # pooled where S is (on its device, in its precision) before anything full-size is copied
            picture = torch.from_numpy(np.ascontiguousarray(pictures[i][box])).permute(2, 0, 1)[None]
            coarse_mask = None if mask is None else \
                block_mean(torch.from_numpy(mask)[None, None], stride)[0, 0].numpy() > 0
            inputs.append(_Latent(block_probabilities(probs[i:i + 1, :, box[0], box[1]].detach().clamp(0.0, 1.0),
                                                      stride)[0],
                                  block_mean(picture, stride)[0].permute(1, 2, 0).numpy(),
                                  block_seeds(seeds[i:i + 1][:, box[0], box[1]], stride, n_labels,
                                              self.ignore_index)[0],
                                  coarse_mask, box))
        return inputs

    def _problems(self, inputs):
        lam = self.lam
        settings = {name: self.settings[name] for name in self.regularizer.settings}
        if self.latent_stride > 1:
            lam, settings = self.regularizer.coarsen(self.latent_stride, lam, settings)
        return [self.regularizer.latent_problem(adm_unary(latent.soft, gamma=self.gamma), latent.image, latent.seeds,
                                                lam=lam, unlabeled=self.ignore_index, valid=latent.valid, **settings)
                for latent in inputs]

    def __call__(self, probs: torch.Tensor, images: np.ndarray | torch.Tensor, scribbles: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
        """Latent labels X: an int64 (N, H, W) tensor on `probs`' device, scribbles respected; argmax S
        outside the bounding box of the `valid` pixels (see :meth:`problems`), where no loss reads X.

        The grid regularizer at full resolution with ``numba-expansion`` (the default) builds and solves
        the images' problems in one compiled call per worker thread (:mod:`admsolve.backends.expansion_batch`):
        the same labels as building the problems and solving them one by one, with the energies summed in
        compiled code (as the backend's history) and each result's ``time`` its thread's time shared
        equally among the images the thread solved."""
        checked = self._checked(probs, images, scribbles, valid)
        compiled = self._compiled_options(checked)
        labels = argmax_labels(checked.probs.detach()).cpu().numpy()
        if compiled is not None:
            self.results = self._solve_compiled(checked, *compiled)
            pieces = [result.labels for result in self.results]
            self.problem_pixels = [piece.size if checked.masks is None else int(checked.masks[i][box].sum())
                                   for i, (piece, box) in enumerate(zip(pieces, checked.boxes))]
        else:
            inputs = self._latent_inputs(checked)
            self.results = self._solve_problems(inputs)
            pieces = [result.labels if self.latent_stride == 1 else
                      upsample_labels(result.labels[None], self.latent_stride, labels[i][latent.box].shape)[0]
                      for i, (result, latent) in enumerate(zip(self.results, inputs))]
            self.problem_pixels = [latent.soft.shape[0] * latent.soft.shape[1] if latent.valid is None else
                                   int(latent.valid.sum()) for latent in inputs]
        for i, (piece, box) in enumerate(zip(pieces, checked.boxes)):
            labels[i][box] = piece
        if self.latent_stride > 1:
            # the hard constraints, at full resolution
            labels = np.where(checked.seeds != self.ignore_index, checked.seeds, labels)
        return torch.from_numpy(labels).to(checked.probs.device)

    def _solve_problems(self, inputs):
        """Build each image's problem and solve them with solve_batch."""
        problems = self._problems(inputs)
        guesses = [latent.soft.argmax(-1) for latent in inputs]  # argmax S (pooled on the latent grid)
        inits = guesses if self.latent_init == "argmax" else [np.zeros_like(guess) for guess in guesses]
        per_problem = None
        if self.restrict_labels:
            per_problem = [{"labels": np.union1d(np.unique(guess), np.unique(latent.seeds[latent.seeds != self.ignore_index]))}
                           for guess, latent in zip(guesses, inputs)]
        return solve_batch(problems, self.backend, workers=self.workers, inits=inits,
                           problem_options=per_problem, **self.solver_options)

    def _compiled_options(self, checked):
        """``(memory, max_iter)`` of the backend's options when the compiled latent step applies (grid
        regularizer, full resolution, numba-expansion, finite probabilities, images whose contrast weights
        need no rescaling, energies within float64's range), else None (the problems are built and solved
        one by one, and any error is theirs)."""
        if self.regularizer.name != "grid" or self.latent_stride != 1 or \
                not (self.backend is None or (isinstance(self.backend, str) and self.backend == "numba-expansion")):
            return None  # (numba, a dependency, makes numba-expansion the grid CRF's default backend)
        from ..backends.numba_expansion import MEMORY_LAYOUTS

        options = check_options("numba-expansion", load("numba-expansion"), self.solver_options)
        memory, max_iter = options.pop("memory", "auto"), options.pop("max_iter", None)
        if options or memory not in MEMORY_LAYOUTS:
            return None
        height, width = checked.probs.shape[2:]
        directions = N_DIRECTIONS[self.settings["connectivity"]]
        if (self.gamma * -math.log(ADM_EPS) + self.lam * directions) * height * width > ENERGY_LIMIT or \
                not bool(torch.isfinite(checked.probs).all()):
            return None
        for picture, box in zip(checked.pictures, checked.boxes):
            peak = float(np.abs(picture[box]).max())
            if peak > 2.0**400 or 0 < peak < 2.0**-400:  # contrast_weights rescales such an image
                return None
        return memory, max_iter

    def _solve_compiled(self, checked, memory, max_iter):
        """solve_latent_batch over the batch, the images shared among the worker threads (largest first,
        dealt in turn); a SolveResult per image, in order."""
        from ..backends.expansion_batch import solve_latent_batch
        from ..backends.numba_expansion import fast_budget, lean_note, residual_bytes

        probs = checked.probs.detach()  # float32 or float64 as given (bfloat16 and float16 as float32)
        probs = probs.to(torch.float32) if probs.dtype not in (torch.float32, torch.float64) else probs
        probs = probs.cpu().contiguous().numpy()
        n, n_labels, height, width = probs.shape
        valid = np.ones((n, height, width), bool) if checked.masks is None else checked.masks
        boxes = np.array([box[0].indices(height)[:2] + box[1].indices(width)[:2] for box in checked.boxes],
                         dtype=np.int64)
        directions = N_DIRECTIONS[self.settings["connectivity"]]
        shapes = boxes[:, 1::2] - boxes[:, ::2]  # (height, width) of each image's problem
        sizes = shapes.prod(axis=1)
        # (an upper bound, all labels moved to: the compiled solve counts each image's own)
        budget, available = fast_budget(memory, residual_bytes(shapes[sizes.argmax()], directions, n_labels))

        def solve_share(indices):
            *outcome, cancelled = solve_latent_batch(
                indices, probs, checked.pictures, checked.seeds, valid, boxes, self.gamma, ADM_EPS, self.lam,
                directions, self.ignore_index, self.latent_init == "argmax", self.restrict_labels,
                -1 if max_iter is None else max_iter, budget, True if n_labels == 2 else None, CANCEL.array)
            if cancelled:
                check_cancelled()
            return outcome

        results = [None] * n
        workers = min(self.workers or os.cpu_count() or 1, n)
        for indices, (labels, histories, converged, lean, moved), seconds in in_shares(
                solve_share, np.argsort(-sizes, kind="stable"), workers):
            for j, i in enumerate(indices):
                outcome = {"history": histories[j].tolist(), "converged": bool(converged[j])}
                message = stop_message(outcome, max_iter)
                if memory == "auto" and lean[j]:
                    message += "; " + lean_note(residual_bytes(shapes[i], directions, moved[j]), available)
                results[i] = SolveResult(labels=labels[j], energy=outcome["history"][-1], backend="numba-expansion",
                                         time=seconds / len(indices), sweeps=len(outcome["history"]) - 1, **outcome,
                                         message=message, memory="lean" if lean[j] else "fast")
        return results


class _Checked(NamedTuple):
    """The inputs of an ADMStep call, checked (ADMStep._checked)."""

    probs: torch.Tensor
    pictures: np.ndarray
    seeds: np.ndarray
    masks: np.ndarray | None
    boxes: list[tuple[slice, slice]]


class _Latent(NamedTuple):
    """One image's eq. 8 inputs on the latent grid, within the bounding box `box` (rows, columns) of
    its valid pixels: S (h, w, K) float64, the image (h, w, 3), the seeds (h, w) and the valid pixels
    (h, w) bool, None when all are."""

    soft: np.ndarray
    image: np.ndarray
    seeds: np.ndarray
    valid: np.ndarray | None
    box: tuple[slice, slice]


def _check_valid(valid, shape):
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != tuple(shape):
        raise ValueError(f"valid: expected a bool tensor of shape {tuple(shape)} (the predictions'), "
                         f"got {_describe(valid)}")
    return valid


def _bounding_box(mask, index):
    """(rows, columns) slices of the smallest box holding the True pixels of (H, W) `mask`."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"valid: expected at least one valid pixel in each image, image {index} has none")
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


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
