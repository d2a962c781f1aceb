"""The settings of a training run, kept free of torch so that the command line can show them
without importing it. :mod:`admsolve.training` runs them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from .._validation import as_connectivity, as_scalar, describe
from ..backends import lookup
from .regularizers import REGULARIZERS, lookup_regularizer

#: Networks :func:`admsolve.training.build_model` builds by name; it also takes "package.module:factory".
MODELS = ("fcn-small", "effnet-lite0", "deeplabv3-resnet50", "deeplabv3-resnet101", "deeplabv3-mobilenet")
OPTIMIZERS = ("gd", "adm")
NETWORK_OPTIMIZERS = ("adam", "sgd")
#: Learning-rate schedules over a phase: "poly", lr (1 - t/T)^poly_power; "step", lr divided by 10 after each
#: third of the phase (the authors' Caffe solvers: 9000 iterations, step 3000); "constant".
SCHEDULES = ("poly", "step", "constant")
#: The starting labelings of ADM's latent step: argmax S, or label 0 everywhere (gco's default, the authors' code).
LATENT_INITS = ("argmax", "label-0")
#: The value a setting takes in a config.json written before the setting existed, where that differs from its
#: default: those runs computed the older behaviour (crop padding took part in the losses; ADM started from
#: argmax S on all labels; no dropout). A regularized phase's network optimizer, lr and schedule stored as
#: None or not at all were the pCE phase's (:data:`CARRIED_ON`).
STORED_BEFORE = {"padding_in_losses": True, "latent_init": "argmax", "restrict_labels": False, "dropout": 0.0}
#: The regularized phase's settings and the pCE phase's they take on the synthetic data when not given.
CARRIED_ON = {"finetune_optimizer": "network_optimizer", "finetune_lr": "lr", "finetune_schedule": "schedule"}
#: Configurations of `admsolve compare`: key -> (name in the table, settings that differ from the base configuration)
CONFIGURATIONS = {
    "pce": ("pCE only", {"optimizer": "gd", "regularizer": "none"}),
    "gd-grid": ("GD grid", {"optimizer": "gd", "regularizer": "grid"}),
    "adm-grid": ("ADM grid", {"optimizer": "adm", "regularizer": "grid"}),
    "gd-dense": ("GD dense", {"optimizer": "gd", "regularizer": "dense"}),
    "adm-dense": ("ADM dense", {"optimizer": "adm", "regularizer": "dense"}),
}
DEFAULT_CONFIGURATIONS = ("pce", "gd-grid", "adm-grid", "gd-dense")
#: (lam, gamma) per (optimizer, regularizer) for a run that gives none. "synthetic": the built-in data's (the
#: README's main job). "folder": any dataset folder; the grid CRF's values are those the study in the authors'
#: regime chose on the held-back fifth of MSRC-21's train split (docs/reproduction.md, "msrc21: ADM in its
#: authors' regime": ADM grid lam / gamma 160 with gamma 1, GD grid lam 0.5; effnet-lite0, 12 + 4 epochs), the dense
#: CRF's those its main table ran (not tuned). gamma is read by ADM only.
DEFAULT_WEIGHTS = {
    "synthetic": {("gd", "grid"): (4.0, 2.0), ("adm", "grid"): (4.0, 2.0),
                  ("gd", "dense"): (4.0, 2.0), ("adm", "dense"): (4.0, 2.0)},
    "folder": {("gd", "grid"): (0.5, 1.0), ("adm", "grid"): (160.0, 1.0),
               ("gd", "dense"): (0.5, 1.0), ("adm", "dense"): (0.5, 1.0)},
}
#: The regularized phase and ADM's latent step on a dataset folder, for a run that gives none: the authors'
#: regime as the same study chose and ran it (docs/reproduction.md, "msrc21: ADM in its authors' regime"):
#: the pCE network fine-tuned by Adam at lr 3e-4 (chosen among SGD and Adam at 1e-4, 3e-4, 1e-3), divided
#: by 10 after each third of the phase; the solver starting from label 0, moving only to the labels of
#: argmax S and the scribbles (with the grid CRF and a solver that takes labels); dropout 0.5 before
#: effnet-lite0's classifier (0 with any other network). On the synthetic data: the pCE phase's optimizer,
#: lr and schedule carried on (:data:`CARRIED_ON`), argmax S, all labels, no dropout.
FOLDER_DEFAULTS = {"finetune_optimizer": "adam", "finetune_lr": 3e-4, "finetune_schedule": "step",
                   "latent_init": "label-0", "restrict_labels": True, "dropout": 0.5}
SYNTHETIC_DEFAULTS = {"latent_init": "argmax", "restrict_labels": False, "dropout": 0.0}
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_factory(name: str) -> bool:
    """Whether `name` has the form "package.module:factory" (not whether it imports)."""
    return _FACTORY.fullmatch(name) is not None


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run (stored as the run folder's ``config.json``).

    ``data`` is "synthetic" (the built-in default) or a dataset folder (the layout of
    ``../shared/data``, or PASCAL VOC + ScribbleSup); ``train_split`` and ``val_split`` name its splits
    ("train-fit" and "train-holdout" hold back a fifth of train for choosing hyperparameters);
    ``scribbles="masks"`` trains on the full masks (the fully supervised upper bound). ``lam=None``
    and ``gamma=None`` take :data:`DEFAULT_WEIGHTS` of the data, optimizer and regularizer; ``crop_size=None`` takes 96 for the synthetic set, else
    224; ``eval_every=None`` takes 2 for the synthetic set, else 1; ``model=None`` takes "fcn-small"
    for the synthetic set, else "effnet-lite0"
    (:attr:`resolved_model`). ``model`` is one of :data:`MODELS` or "package.module:factory" (a
    function of n_labels returning an ``nn.Module``). ``init`` starts the network from another run's
    ``checkpoint.pt`` (or a saved state dict), e.g. a shared pCE phase.

    The regularized phase starts a new network optimizer and schedule: ``finetune_optimizer``,
    ``finetune_lr`` and ``finetune_schedule``. ``proximal_weight`` is the weight of eq. 7's term towards
    X (None: gamma, the paper's equations; the authors' code weights it apart, 1.5). ``latent_init`` is
    the labeling ADM's solver starts from. ``dropout`` is applied before the classifier of
    "effnet-lite0" while it trains (so the S of the latent step sees it, as in the authors' training).
    ``latent_init``, ``dropout``, ``restrict_labels`` and the regularized phase's settings take, when
    None, the authors' regime on a dataset folder (:data:`FOLDER_DEFAULTS`) and on the synthetic set the pCE phase's
    optimizer, lr and schedule with :data:`SYNTHETIC_DEFAULTS`. ``padding_in_losses``
    True lets crop padding take part in the losses and the latent step, as before the valid-pixel
    mask (runs stored before it read as True).
    """

    data: str = "synthetic"
    train_split: str = "train"
    val_split: str = "val"
    optimizer: str = "adm"
    regularizer: str = "grid"
    backend: str | None = None
    lam: float | None = None
    gamma: float | None = None
    gamma_growth: float = 1.0
    connectivity: int = 8
    sxy: float = 80.0
    srgb: float = 13.0
    max_iter: int = 5
    restrict_labels: bool | None = None
    latent_stride: int = 1
    model: str | None = None
    weights: str | None = None
    init: str | None = None
    epochs: int = 10
    pretrain_epochs: int = 10
    eval_every: int | None = None
    batch_size: int = 8
    crop_size: int | None = None
    scale: tuple = (0.75, 1.25)
    network_optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "poly"
    finetune_optimizer: str | None = None
    finetune_lr: float | None = None
    finetune_schedule: str | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    proximal_weight: float | None = None
    latent_init: str | None = None
    dropout: float | None = None
    padding_in_losses: bool = False
    scribbles: str = "auto"
    scribble_length: float = 1.0
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    loader_workers: int = 0
    amp: bool = False
    tensorboard: bool = False
    world_size: int = 1  # recorded, not set: the number of processes that train the run (torchrun)

    def __post_init__(self):
        self.scale = tuple(self.scale)
        for name, allowed in (("optimizer", OPTIMIZERS), ("network_optimizer", NETWORK_OPTIMIZERS),
                              ("finetune_optimizer", NETWORK_OPTIMIZERS), ("schedule", SCHEDULES),
                              ("finetune_schedule", SCHEDULES), ("latent_init", LATENT_INITS)):
            value = getattr(self, name)
            if value not in allowed and not (value is None and name in ("finetune_optimizer", "finetune_schedule",
                                                                        "latent_init")):
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        known = isinstance(self.model, str) and (self.model in MODELS or is_factory(self.model))
        if self.model is not None and not known:
            raise ValueError(f"model: expected None, one of {', '.join(MODELS)} or 'package.module:factory', "
                             f"got {self.model!r}")
        regularizer = lookup_regularizer(self.regularizer)
        as_connectivity(self.connectivity)
        for name in ("train_split", "val_split"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"{name}: expected a split name such as 'train', got {getattr(self, name)!r}")
        as_scalar(self.world_size, "world_size", minimum=1, integer=True)
        for name in ("epochs", "pretrain_epochs", "max_iter", "seed", "loader_workers"):
            as_scalar(getattr(self, name), name, minimum=0, integer=True)
        as_scalar(self.batch_size, "batch_size", minimum=1, integer=True)
        if self.eval_every is not None:
            as_scalar(self.eval_every, "eval_every", minimum=1, integer=True)
        as_scalar(self.gamma_growth, "gamma_growth", minimum=1.0)
        as_scalar(self.latent_stride, "latent_stride", minimum=1, integer=True)
        if self.crop_size is not None:
            as_scalar(self.crop_size, "crop_size", minimum=8, integer=True)
        if self.epochs + self.pretrain_epochs == 0:
            raise ValueError("epochs: expected at least one epoch in total, got epochs=0 and pretrain_epochs=0")
        for name in ("lr", "momentum", "weight_decay", "poly_power", "sxy", "srgb"):
            as_scalar(getattr(self, name), name, minimum=0.0)
        for name in ("lam", "gamma", "finetune_lr", "proximal_weight"):
            if getattr(self, name) is not None:
                as_scalar(getattr(self, name), name, minimum=0.0)
        if self.restrict_labels is not None and not isinstance(self.restrict_labels, bool):
            raise TypeError(f"restrict_labels: expected True, False or None, got {describe(self.restrict_labels)}")
        if self.dropout is not None and not 0.0 <= as_scalar(self.dropout, "dropout") < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if self.dropout and self.resolved_model != "effnet-lite0":
            raise ValueError(f"dropout: expected 0 with model {self.resolved_model!r} (only effnet-lite0 has a "
                             f"dropout layer), got {self.dropout!r}")
        if self.backend is not None:
            entry = lookup(self.backend)
            if self.optimizer != "adm" or self.regularizer == "none":
                raise ValueError(f"backend: a solver is used only with optimizer 'adm' and a regularizer, "
                                 f"got backend={self.backend!r} with optimizer {self.optimizer!r} and "
                                 f"regularizer {self.regularizer!r}")
            if not issubclass(regularizer.problem, entry.problem):
                raise ValueError(f"backend: the {self.regularizer} regularizer needs a backend that solves a "
                                 f"{regularizer.problem.__name__}, got {self.backend!r} (it solves "
                                 f"{entry.problem.__name__})")

    @property
    def weight(self) -> float:
        """lam, or its default for the data, the optimizer and the regularizer (:data:`DEFAULT_WEIGHTS`)."""
        if self.lam is not None:
            return self.lam
        return 0.0 if self.regularizer == "none" else self._default_weights()[0]

    @property
    def resolved_gamma(self) -> float:
        """gamma, or its default for the data and the regularizer (:data:`DEFAULT_WEIGHTS`, ADM's entry)."""
        if self.gamma is not None:
            return self.gamma
        return self._default_weights("adm")[1]

    def _default_weights(self, optimizer=None):
        kind = "synthetic" if self.data == "synthetic" else "folder"
        regularizer = "grid" if self.regularizer == "none" else self.regularizer
        return DEFAULT_WEIGHTS[kind][(optimizer or self.optimizer, regularizer)]

    @property
    def resolved_model(self) -> str:
        """model, or the default of the data: "fcn-small" for the synthetic set, else "effnet-lite0"."""
        if self.model is not None:
            return self.model
        return "fcn-small" if self.data == "synthetic" else "effnet-lite0"

    def resolved(self) -> TrainConfig:
        """This configuration with the values a run uses in place of its defaults of None: ``model``,
        ``crop_size`` (96 on the synthetic data, else 224), ``eval_every`` (2 on the synthetic data, whose
        epochs are 4 steps, else 1), ``gamma`` and, with a regularizer, ``lam`` (:data:`DEFAULT_WEIGHTS`),
        the regularized phase's network optimizer, lr and schedule, ``latent_init``, ``restrict_labels``
        and ``dropout`` (:data:`FOLDER_DEFAULTS`, :data:`SYNTHETIC_DEFAULTS`). A run folder's
        ``config.json`` stores this form."""
        synthetic = self.data == "synthetic"
        if synthetic:
            defaults = {**SYNTHETIC_DEFAULTS, **{name: getattr(self, pce) for name, pce in CARRIED_ON.items()}}
        else:  # (dropout where the network has the layer; label restriction where the solver takes labels)
            restrictable = self.regularizer == "grid" and (self.backend is None or lookup(self.backend).takes_labels)
            dropout = FOLDER_DEFAULTS["dropout"] if self.resolved_model == "effnet-lite0" else 0.0
            defaults = {**FOLDER_DEFAULTS, "dropout": dropout,
                        "restrict_labels": FOLDER_DEFAULTS["restrict_labels"] and restrictable}
        return dataclasses.replace(self, model=self.resolved_model,
                                   crop_size=self.crop_size or (96 if synthetic else 224),
                                   eval_every=self.eval_every or (2 if synthetic else 1),
                                   lam=self.lam if self.regularizer == "none" else self.weight,
                                   gamma=self.resolved_gamma,
                                   **{name: default if getattr(self, name) is None else getattr(self, name)
                                      for name, default in defaults.items()})

    @property
    def total_epochs(self) -> int:
        return self.pretrain_epochs + self.epochs

    @property
    def phase_settings(self) -> dict[str, tuple[str, float, str]]:
        """(network optimizer, lr, schedule) of each phase, "pce" and "regularized", defaults resolved."""
        config = self.resolved()
        return {"pce": (config.network_optimizer, config.lr, config.schedule),
                "regularized": (config.finetune_optimizer, config.finetune_lr, config.finetune_schedule)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The configuration of a dict of settings, such as a stored config.json: a setting it lacks
        takes its default, or its :data:`STORED_BEFORE` value (a config.json from before it existed)."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"config: unknown settings {unknown}; known: {sorted(names)}")
        carried = {name: values[pce] for name, pce in CARRIED_ON.items()
                   if values.get(name) is None and values.get(pce) is not None}
        return cls(**{**STORED_BEFORE, **values, **carried})
