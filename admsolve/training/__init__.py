"""PyTorch losses for training segmentation networks from scribbles (optional: needs torch).

The core of :mod:`admsolve` does not import this subpackage; importing it requires PyTorch.
"""

from .adm import ADMStep
from .losses import (
    DenseCRFLoss,
    GridCRFLoss,
    PartialCrossEntropyLoss,
    ProximalLoss,
    dense_crf_loss,
    grid_crf_loss,
    partial_cross_entropy,
    proximal_loss,
)

__all__ = [
    "ADMStep",
    "DenseCRFLoss",
    "GridCRFLoss",
    "PartialCrossEntropyLoss",
    "ProximalLoss",
    "dense_crf_loss",
    "grid_crf_loss",
    "partial_cross_entropy",
    "proximal_loss",
]
