"""Training segmentation networks from scribbles with regularized losses (optional: needs torch).

Losses (a function and an ``nn.Module`` each), the ADM latent step, the training loop of
Algorithm 1 (:func:`train`, :func:`resume`), applying and scoring a trained network (:class:`Predictor`,
:func:`dense_crf`, :func:`evaluate_run`, :func:`export_run`), the optimizer comparison
(:func:`compare`), networks and metrics. The core of :mod:`admsolve` does not import this
subpackage. :mod:`.config` (the settings of a run) is torch-free, so the command line can read it
without torch; every other name here is imported on first use and needs PyTorch
(``pip install "admsolve[train]"``).

Layer: the highest below the command line; imports data, energies, filters, backends and solve.
"""

from .._support import lazy_names

from .config import TrainConfig

#: Where each public name lives (imported on first access, PEP 562).
_HOMES = {
    "ADMStep": "adm",
    "compare": "comparison", "format_table": "comparison",
    "TrainingDiverged": "loop", "read_metrics": "loop", "resume": "loop", "train": "loop",
    "DenseCRFLoss": "losses", "GridCRFLoss": "losses", "PartialCrossEntropyLoss": "losses", "ProximalLoss": "losses",
    "dense_crf_loss": "losses", "grid_crf_loss": "losses", "partial_cross_entropy": "losses", "proximal_loss": "losses",
    "SegmentationScores": "metrics", "confusion_matrix": "metrics",
    "ASPP": "models", "DeepLabV3": "models", "EffNetLite0ASPP": "models", "EfficientNetLite0": "models",
    "SmallFCN": "models", "build_model": "models", "efficientnet_lite0": "models", "wrap_model": "models",
    "CRF_DEFAULTS": "crf", "dense_crf": "crf", "Predictor": "prediction", "export_run": "export", "evaluate_run": "prediction",
    "Plan": "reproduction", "reproduce": "reproduction", "write_report": "reproduction",
}


__getattr__, __dir__ = lazy_names(__name__, _HOMES)

__all__ = [
    "ADMStep",
    "CRF_DEFAULTS",
    "Predictor",
    "dense_crf",
    "ASPP",
    "DeepLabV3",
    "EffNetLite0ASPP",
    "EfficientNetLite0",
    "Plan",
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
    "efficientnet_lite0",
    "evaluate_run",
    "export_run",
    "format_table",
    "grid_crf_loss",
    "partial_cross_entropy",
    "proximal_loss",
    "read_metrics",
    "reproduce",
    "resume",
    "train",
    "wrap_model",
    "write_report",
]
