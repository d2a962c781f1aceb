"""Training segmentation networks from scribbles with regularized losses (optional: needs torch).

Losses (a function and an ``nn.Module`` each), the ADM latent step, the training loop of
Algorithm 1 (:func:`train`, :func:`resume`, :func:`evaluate_run`), the optimizer comparison
(:func:`compare`), networks and metrics. The core of :mod:`admsolve` does not import this
subpackage; importing it requires PyTorch (``pip install "admsolve[train]"``).
"""

from ..train_config import TrainConfig
from .adm import ADMStep
from .comparison import compare, format_table
from .loop import TrainingDiverged, evaluate_run, read_metrics, resume, train
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
from .metrics import SegmentationScores, confusion_matrix
from .models import SmallFCN, build_model

__all__ = [
    "ADMStep",
    "DenseCRFLoss",
    "GridCRFLoss",
    "PartialCrossEntropyLoss",
    "ProximalLoss",
    "SegmentationScores",
    "SmallFCN",
    "TrainConfig",
    "TrainingDiverged",
    "build_model",
    "compare",
    "confusion_matrix",
    "dense_crf_loss",
    "evaluate_run",
    "format_table",
    "grid_crf_loss",
    "partial_cross_entropy",
    "proximal_loss",
    "read_metrics",
    "resume",
    "train",
]
