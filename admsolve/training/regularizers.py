"""The regularizers R of loss (4), one table entry each: the relaxation gradient descent minimises
and the latent problem of ADM's eq. 8.

A new regularizer (say normalized cut) is one :class:`Regularizer` entry in :data:`REGULARIZERS`
(with a relaxed loss in :mod:`.losses` and, for ADM, a problem class some backend solves) plus its
tests; the configuration, the command line, the loop and :class:`~admsolve.training.ADMStep` read
the table. This module is torch-free at import (the losses are imported when first called), so the
configuration can list the regularizers without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..energies import DenseCRF, GridCRF, LabelingProblem, contrast_weights


@dataclass(frozen=True)
class Regularizer:
    """One regularizer: its name, settings and the two forms the optimizers use.

    Attributes
    ----------
    name : str
        The key in :data:`REGULARIZERS` and the value of ``TrainConfig.regularizer``.
    settings : tuple of str
        The :class:`~admsolve.training.TrainConfig` fields (and ``ADMStep`` arguments) it reads,
        passed as keywords to `relaxed_loss` and `latent_problem`.
    problem : type or None
        The class of ADM's latent problem; a backend that solves it (or a base class) solves eq. 8.
    term : str
        The name of its term in the training records ("train_<term>").
    relaxed_loss : callable or None
        ``relaxed_loss(probs, images, *, lam, workers, roi, **settings)``: lam R(S) per pixel, a scalar
        tensor (what GD minimises); `workers` is the number of CPU threads it may use beside torch's
        (this process's share of the cores under torchrun); `roi`, an (N, H, W) bool tensor or None,
        the pixels that take part (not crop padding), whose count the mean divides by.
    latent_problem : callable or None
        ``latent_problem(unary, image, seeds, *, lam, unlabeled, valid, **settings)``: the problem of
        eq. 8 for one image, with unaries ``-gamma log S`` given; `valid`, an (H, W) bool array or
        None, the pixels that take part.
    coarsen : callable or None
        ``coarsen(stride, lam, settings) -> (lam, settings)``: the weight and settings of the latent
        problem on a grid 1/stride of the image's in each direction (``ADMStep(latent_stride=...)``),
        chosen so that the coarse energy of a labeling, times stride², approximates the fine energy of
        the labeling upsampled; None: the regularizer has no coarse latent problem.
    """

    name: str
    settings: tuple[str, ...] = ()
    problem: type[LabelingProblem] | None = None
    term: str = ""
    relaxed_loss: Callable | None = None
    latent_problem: Callable | None = None
    coarsen: Callable | None = None


def _grid_loss(probs, images, *, lam, workers, roi, connectivity):
    from .losses import grid_crf_loss

    del workers  # torch operations only: torch's own threads
    return grid_crf_loss(probs, images, lam=lam, connectivity=connectivity, roi=roi, reduction="mean")


def _grid_problem(unary, image, seeds, *, lam, unlabeled, valid, connectivity):
    # Pixels outside `valid` are cut off: no edges, no unary cost (their label is free and costs nothing).
    if valid is not None:
        unary = np.where(valid[..., None], unary, 0.0)
    return GridCRF(unary, contrast_weights(image, connectivity=connectivity, mask=valid), lam=lam, seeds=seeds,
                   unlabeled=unlabeled)


def _grid_coarsen(stride, lam, settings):
    # A coarse pixel stands for stride² pixels (its unary: their mean), a coarse edge across a block
    # border for stride edges: lam / stride keeps the balance, coarse energy * stride² ~ fine energy.
    return lam / stride, settings


def _dense_loss(probs, images, *, lam, workers, roi, sxy, srgb):
    from .losses import dense_crf_loss

    return dense_crf_loss(probs, images, sxy=sxy, srgb=srgb, lam=lam, roi=roi, reduction="mean", workers=workers)


def _dense_problem(unary, image, seeds, *, lam, unlabeled, valid, sxy, srgb):
    # compat 2 lam: DenseCRF.energy counts each pair once per direction with compat / 2, so its Potts
    # term equals lam times the relaxed loss at one-hot S (no Gaussian kernel, as in the loss). The
    # dense CRF has no mask: pixels outside `valid` keep zero unaries and take part in the kernel
    # (ADMStep gives it only the bounding box of the valid pixels, the whole of a padded crop's).
    if valid is not None:
        unary = np.where(valid[..., None], unary, 0.0)
    return DenseCRF(unary, np.clip(image, 0, 255), sxy=sxy, srgb=srgb, compat=2 * lam, gaussian_compat=0,
                    seeds=seeds, unlabeled=unlabeled)


def _dense_coarsen(stride, lam, settings):
    # The kernel is normalised (rows sum to about 1), so the Potts term per pixel does not depend on
    # the resolution once the spatial width covers the same image area: sxy / stride, lam unchanged.
    return lam, {**settings, "sxy": settings["sxy"] / stride}


#: Every regularizer, by name.
REGULARIZERS: dict[str, Regularizer] = {
    regularizer.name: regularizer
    for regularizer in (
        Regularizer("none"),
        Regularizer("grid", settings=("connectivity",), problem=GridCRF, term="grid_crf",
                    relaxed_loss=_grid_loss, latent_problem=_grid_problem, coarsen=_grid_coarsen),
        Regularizer("dense", settings=("sxy", "srgb"), problem=DenseCRF, term="dense_crf",
                    relaxed_loss=_dense_loss, latent_problem=_dense_problem, coarsen=_dense_coarsen),
    )
}


def lookup_regularizer(name: str) -> Regularizer:
    """The entry of `name`, or a ValueError listing the known ones."""
    if not isinstance(name, str) or name not in REGULARIZERS:
        raise ValueError(f"regularizer: expected one of {', '.join(REGULARIZERS)}, got {name!r}")
    return REGULARIZERS[name]
