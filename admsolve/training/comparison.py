"""Compare optimizers and regularizers on one dataset with one budget (Tables 1-3 of the paper).

Every configuration starts from the same network, trained with partial cross-entropy for
``pretrain_epochs`` (the paper's first phase, run once and shared), then trains ``epochs`` more with
its own loss; "pCE only" goes on with partial cross-entropy for the same number of epochs. Each
configuration is a run folder under the comparison's folder, so an interrupted comparison continues
where it stopped (finished runs are reused, a stopped one is resumed).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._files import write_text, writes_outputs
from .checkpoints import lock_folder
from .config import CONFIGURATIONS, DEFAULT_CONFIGURATIONS, TrainConfig
from .loop import read_metrics, resume, train
from .metrics import plot_comparison
from .warmup import compiling_in_background

#: Columns of the table: (record key, header).
COLUMNS = (("miou", "mIoU"), ("accuracy", "accuracy"), ("trimap_8", "trimap 8px"), ("trimap_16", "trimap 16px"),
           ("grid_crf_loss_train", "grid-CRF loss train"), ("grid_crf_loss_val", "grid-CRF loss val"),
           ("grid_crf_energy_train", "Potts(argmax) train"), ("grid_crf_energy_val", "Potts(argmax) val"),
           ("train_time", "train s"), ("solver_time", "solver s"))


#: Settings that only ADM reads, and lam, which only a regularizer reads: a configuration that does not
#: use them stores TrainConfig's defaults, so that its run is reused when only they change.
ADM_SETTINGS = ("backend", "gamma", "gamma_growth", "max_iter", "restrict_labels", "latent_stride",
                "proximal_weight", "latent_init")
#: The network optimizer, lr and schedule of the regularized phase.
REGULARIZED_PHASE_SETTINGS = ("finetune_optimizer", "finetune_lr", "finetune_schedule")


def _unused(config):
    """The settings that the optimizer and regularizer of `config` do not read (without a regularizer,
    no loss reaches crop padding: only the partial cross-entropy, and padding has no scribbles); a run
    without a regularized phase (a shared pCE phase) reads none of that phase's."""
    unused = () if config.optimizer == "adm" and config.regularizer != "none" else ADM_SETTINGS
    unused += ("lam", "padding_in_losses") if config.regularizer == "none" else ()
    return unused + REGULARIZED_PHASE_SETTINGS if config.epochs == 0 else unused


def _unused_to_defaults(config):
    """`config` with the settings its optimizer and regularizer do not read set to their defaults."""
    defaults = TrainConfig()
    return dataclasses.replace(config, **{name: getattr(defaults, name) for name in _unused(config)})


def _configuration(base, key, init):
    """The TrainConfig of configuration `key`: base's settings, its own loss, the shared start."""
    if key not in CONFIGURATIONS:
        raise ValueError(f"configurations: expected keys among {', '.join(CONFIGURATIONS)}, got {key!r}")
    settings = dict(CONFIGURATIONS[key][1])
    if settings["regularizer"] != base.regularizer:
        settings["backend"] = None  # the base's solver belongs to its own regularizer
    return _unused_to_defaults(dataclasses.replace(base, **settings, pretrain_epochs=0, init=init))


#: Settings that change how a run is computed or logged, not what it learns (the same batches for any number
#: of loader workers, the same latent labels for any number of solver threads, the same records on any
#: number of processes; evaluating touches neither the weights nor a random draw): runs that differ only in
#: them are the same run.
RESOURCE_SETTINGS = ("workers", "loader_workers", "world_size", "tensorboard", "eval_every")

#: Settings that name files or folders: stored resolved, and compared resolved.
PATH_SETTINGS = ("data", "init", "weights")


def _resolved(settings):
    """`settings` (a dict of TrainConfig fields) with its paths made absolute, so that a run folder is
    found again through a relative or an absolute path alike ("synthetic" is not a path)."""
    settings = dict(settings)
    for name in PATH_SETTINGS:
        value = settings.get(name)
        if isinstance(value, str) and not (name == "data" and value == "synthetic"):
            settings[name] = str(Path(value).expanduser().resolve())
    return settings


def _comparable(settings, folder):
    """Stored or new run `settings` in the form two runs of `folder` are compared in: every field
    (an older config.json lacks the newer ones: their defaults), paths resolved, the
    :data:`RESOURCE_SETTINGS` left out; a start from the group's own shared pCE phase
    (``../pretrain/checkpoint.pt``) is named by that role, so that a group folder can be moved
    (e.g. committed and checked out elsewhere) and its runs still be reused."""
    config = TrainConfig.from_dict(settings).resolved()
    settings = _resolved(dataclasses.asdict(config))
    for name in RESOURCE_SETTINGS:  # how the work was spread or logged, not what it computed
        del settings[name]
    for name in _unused(config):  # what the run does not read cannot tell two runs apart (nor can its default)
        del settings[name]
    init = settings.get("init")
    if init is not None and Path(init).parent.name == "pretrain" and Path(init).name == "checkpoint.pt" \
            and Path(init).parent.parent.name == Path(folder).resolve().parent.name:
        settings["init"] = "the group's pretrain/checkpoint.pt"
    return settings


def _run(config, folder, progress):
    """Train `config` in `folder`, or reuse / resume what an earlier call left there (a finished run
    whose metrics.jsonl lost records gets them back from its checkpoint, through resume)."""
    stored = folder / "config.json"
    if stored.is_file():
        if _comparable(json.loads(stored.read_text()), folder) != _comparable(dataclasses.asdict(config.resolved()),
                                                                              folder):
            raise FileExistsError(f"out: {str(folder)!r} holds a run with other settings; choose another --out")
        records = read_metrics(folder)
        if [record["epoch"] for record in records] == list(range(1, config.total_epochs + 1)):
            return records  # finished, with one record per epoch
        if (folder / "checkpoint.pt").is_file():
            return resume(folder, progress=progress)
        for name in ("config.json", "metrics.jsonl", "steps.jsonl"):  # stopped before its first checkpoint
            (folder / name).unlink(missing_ok=True)
    return train(config, folder, progress=progress)


def compare(base: TrainConfig, out: str | os.PathLike[str], *, configurations: Sequence[str] = DEFAULT_CONFIGURATIONS,
            progress: bool = True) -> list[dict[str, Any]]:
    """Train each configuration from a shared pCE phase and tabulate their last evaluation.

    Parameters
    ----------
    base : TrainConfig
        Data, network, budget (``pretrain_epochs`` shared, then ``epochs`` per configuration),
        ``lam``/``gamma`` and the ADM solver (``backend``, used by the ADM configuration of
        ``base.regularizer``; the others take their regularizer's default).
    out : str or Path
        Folder of the comparison: ``pretrain/``, one run folder per configuration,
        ``comparison.md``, ``comparison.json`` and ``comparison.png``.
    configurations : sequence of str
        Keys of :data:`CONFIGURATIONS`.

    Returns
    -------
    list of dict
        One row per configuration: "key", "name", "settings" and the columns of :data:`COLUMNS`.
    """
    out = Path(out).resolve()  # the runs' paths (init) do not depend on the working folder
    base = dataclasses.replace(base, **{name: value for name, value in _resolved(dataclasses.asdict(base)).items()
                                         if name in PATH_SETTINGS})
    if not configurations:
        raise ValueError("configurations: expected at least one configuration, got none")
    configs = [_configuration(base, key, None) for key in configurations]  # checks every key before training
    out.mkdir(parents=True, exist_ok=True)
    # one process writes the comparison (each run also locks its own folder); the regularized phases'
    # compiled code is made while pCE trains
    with lock_folder(out, "out"), compiling_in_background(configs if base.pretrain_epochs > 0 else []):
        init, writes = None, writes_outputs()  # under torchrun rank 0 reports and writes
        report = progress and writes
        if base.pretrain_epochs > 0:
            pretrain = _unused_to_defaults(dataclasses.replace(base, optimizer="gd", regularizer="none", epochs=0,
                                                               init=None))
            if report:
                print(f"phase 1: partial cross-entropy for {base.pretrain_epochs} epochs -> {out / 'pretrain'}")
            _run(pretrain, out / "pretrain", progress)
            init = str(out / "pretrain" / "checkpoint.pt")
        rows, curves = [], {}
        for key in configurations:
            name = CONFIGURATIONS[key][0]
            config = _configuration(base, key, init)
            if report:
                print(f"phase 2: {name} for {config.epochs} epochs -> {out / key}")
            records = _run(config, out / key, progress)
            last = records[-1]
            row = {"key": key, "name": name, "settings": dataclasses.asdict(config)}
            row.update({column: last.get(column) for column, _ in COLUMNS})
            row["train_time"] = sum(record["train_time"] for record in records)
            row["solver_time"] = sum(record.get("solver_time", 0.0) for record in records)
            rows.append(row)
            curves[name] = records
        if writes:
            write_text(out / "comparison.json", json.dumps(rows, indent=2) + "\n")
            write_text(out / "comparison.md", format_table(rows) + "\n")
            plot_comparison(curves, out / "comparison.png")
        return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the comparison's rows."""
    headers = ["configuration"] + [header for _, header in COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["name"]]
        for column, _ in COLUMNS:
            value = row.get(column)
            if value is None:
                cells.append("-")
            elif column.startswith("grid_crf"):  # per pixel
                cells.append(f"{value:.5f}")
            elif column.endswith("time"):
                cells.append(f"{value:.0f}")
            else:
                cells.append(f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
