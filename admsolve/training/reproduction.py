"""The reproduction study of the paper's claims (Tables 1-3, Figs. 3, 5 and 6, and an ablation of
ADM's latent solver), run as resumable groups of training runs and written up as one Markdown report.

A *group* is one shared partial cross-entropy phase (``pretrain/``) and configurations that start
from it, each in its own run folder; a finished run (all its epochs in ``metrics.jsonl``) is reused,
a stopped one resumed, so the study can span several sittings. The parts, per dataset:

- ``tuning/``: hyperparameters chosen on the held-back fifth of train (``train-fit`` to fit,
  ``train-holdout`` to score), never on val: lam per configuration over ``lam_grid``, then gamma
  for the ADM configurations over ``gamma_grid`` at their lam.
- ``seed-<s>/``: Tables 1-3 for each seed: full supervision, pCE only, GD dense, GD grid, ADM grid,
  ADM dense, with the chosen values.
- ``length-<l>/``: Fig. 6, scribbles shortened to ``l`` (generated scribbles; seed 0).
- ``solvers/``: ADM grid with each latent solver (seed 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validation import describe
from ..data import open_dataset
from .comparison import _run, _unused_to_defaults
from .config import CONFIGURATIONS, TrainConfig
from .loop import TrainingDiverged

if TYPE_CHECKING:
    from ..data.datasets import DatasetLike

#: Configurations of Table 2 (key -> (name, settings)); "full" trains on the masks.
TABLE_CONFIGURATIONS = {
    "full": ("Full supervision", {"optimizer": "gd", "regularizer": "none", "scribbles": "masks"}),
    **{key: CONFIGURATIONS[key] for key in ("pce", "gd-dense", "gd-grid", "adm-grid", "adm-dense")},
}
#: Configurations of Fig. 6.
LENGTH_CONFIGURATIONS = ("pce", "gd-dense", "gd-grid", "adm-grid")
#: The latent solvers of the ablation.
SOLVERS = ("numba-expansion", "numba-swap", "numba-icm", "relaxed-gd")
#: Fewest training images a study accepts (the held-back fifth must hold some).
MIN_TRAIN_IMAGES = 10


@dataclasses.dataclass
class Plan:
    """What the study runs; the budget of every run comes from the base TrainConfig."""

    seeds: tuple = (0, 1, 2)
    configurations: tuple = tuple(TABLE_CONFIGURATIONS)
    lam_grid: tuple = (0.25, 1.0, 4.0)
    gamma_grid: tuple = (1.0, 4.0)
    lengths: tuple = (1.0, 0.5, 0.3, 0.0)
    solvers: tuple = SOLVERS
    tune: bool = True


def _settings(key):
    if key in TABLE_CONFIGURATIONS:
        return dict(TABLE_CONFIGURATIONS[key][1])
    raise ValueError(f"configurations: expected keys among {', '.join(TABLE_CONFIGURATIONS)}, got {key!r}")


def _finished(folder, config):
    records = _read(folder)
    return bool(records) and records[-1]["epoch"] >= config.total_epochs


def _read(folder):
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_group(base: TrainConfig, folder: str | os.PathLike[str], configurations: Mapping[str, Mapping[str, Any]], *,
              progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train one group: the shared pCE phase, then each configuration from it.

    Parameters
    ----------
    base : TrainConfig
        Data, network, budget; ``pretrain_epochs`` of pCE shared, then ``epochs`` per configuration.
    folder : Path
    configurations : dict of str to dict
        Run name -> the settings that differ from `base`.

    Returns
    -------
    dict of str to dict
        Run name -> {"config": TrainConfig, "records": list, "diverged": message or None}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    configs = {name: _unused_to_defaults(dataclasses.replace(base, **settings, pretrain_epochs=0))
               for name, settings in configurations.items()}
    init = None
    if base.pretrain_epochs > 0:
        pretrain = _unused_to_defaults(dataclasses.replace(base, optimizer="gd", regularizer="none", epochs=0,
                                                           init=None))
        checkpoint = folder / "pretrain" / "checkpoint.pt"
        waiting = [name for name, config in configs.items() if not _finished(folder / name, config)]
        if waiting and not checkpoint.is_file() and (folder / "pretrain").is_dir():
            shutil.rmtree(folder / "pretrain")  # its network is needed again and was not kept
        if waiting or not _finished(folder / "pretrain", pretrain):
            _run(pretrain, folder / "pretrain", progress)
        init = str(checkpoint)
    results = {}
    for name, config in configs.items():
        config = dataclasses.replace(config, init=init)
        diverged = None
        try:
            records = _run(config, folder / name, progress)
        except TrainingDiverged as exc:
            records, diverged = _read(folder / name), str(exc)
        results[name] = {"config": config, "records": records, "diverged": diverged}
    return results


def _score(result):
    """mIoU of a run's last evaluation (-1 when it diverged or has none)."""
    return result["records"][-1]["miou"] if result["records"] and not result["diverged"] else -1.0


def tune(base: TrainConfig, folder: str | os.PathLike[str], plan: Plan, *,
         progress: bool = True) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Choose lam (and gamma for ADM) per configuration on the held-back fifth of train.

    Every configuration with a regularizer is trained with each lam of ``plan.lam_grid`` (ADM with
    base's gamma); ADM configurations are then trained at their best lam with each other gamma of
    ``plan.gamma_grid``. The best holdout mIoU wins (ties: the first tried).

    Returns ``(chosen, rows)``: {key: settings to add} and every tried run with its holdout mIoU.
    """
    fit = dataclasses.replace(base, train_split="train-fit", val_split="train-holdout", seed=0)
    regularized = [key for key in plan.configurations if _settings(key)["regularizer"] != "none"]
    tried = {key: {f"{key}-lam{lam:g}": {"lam": lam} for lam in plan.lam_grid} for key in regularized}
    results = run_group(fit, folder, {name: {**_settings(key), **values} for key in regularized
                                      for name, values in tried[key].items()}, progress=progress)
    chosen, rows = {}, []
    for key in regularized:
        best = max(tried[key], key=lambda name: _score(results[name]))
        if _settings(key)["optimizer"] == "adm":
            lam = tried[key][best]["lam"]
            tried[key][best] = {"lam": lam, "gamma": base.gamma}
            more = {f"{key}-lam{lam:g}-gamma{gamma:g}": {"lam": lam, "gamma": gamma}
                    for gamma in plan.gamma_grid if gamma != base.gamma}
            results.update(run_group(fit, folder, {name: {**_settings(key), **values} for name, values in more.items()},
                                     progress=progress))
            tried[key].update(more)
            best = max([best, *more], key=lambda name: _score(results[name]))
        chosen[key] = tried[key][best]
        rows += [{"key": key, "run": name, "values": values, "miou": _score(results[name]),
                  "diverged": results[name]["diverged"], "chosen": name == best} for name, values in tried[key].items()]
    return chosen, rows


def check_data(data: str | os.PathLike[str]) -> DatasetLike:
    """A one-line ValueError unless `data` has masks and enough training images for a study."""
    train = open_dataset(data, "train", scribbles="masks")
    if len(train) < MIN_TRAIN_IMAGES:
        raise ValueError(f"data: a study needs at least {MIN_TRAIN_IMAGES} training images (a fifth is held "
                         f"back for choosing hyperparameters), got {len(train)} in {data!r}")
    if train[0].mask is None:
        raise ValueError(f"data: a study needs ground-truth masks (for its metrics and generated scribbles), "
                         f"got none in {data!r}")
    return train


def reproduce(base: TrainConfig, out: str | os.PathLike[str], plan: Plan | None = None, *,
              progress: bool = True) -> dict[str, Any]:
    """Run (or continue) the study on ``base.data`` under `out`.

    Parameters
    ----------
    base : TrainConfig
        Data, network and budget shared by every run; lam and gamma are chosen per configuration
        on the held-back fifth of train when ``plan.tune`` (else base's values are used).
    out : str or Path
        Folder of the study's runs (one group per subfolder; finished runs are reused).
    plan : Plan, optional

    Returns
    -------
    dict
        Everything the report shows (:func:`write_report`): "base", "plan", "out", "tuning",
        "chosen", "tables" (per seed), "lengths", "solvers", "seconds".
    """
    plan = Plan() if plan is None else plan
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base: expected a TrainConfig, got {describe(base)}")
    for key in plan.configurations:
        _settings(key)
    check_data(base.data)
    out, began = Path(out), time.perf_counter()
    study = {"base": base, "plan": plan, "out": out, "tuning": [], "chosen": {}, "tables": {}, "lengths": {}, "solvers": {}}
    if plan.tune:
        study["chosen"], study["tuning"] = tune(base, out / "tuning", plan, progress=progress)

    def configured(key, **extra):
        return {**_settings(key), **study["chosen"].get(key, {}), **extra}

    for seed in plan.seeds:
        study["tables"][seed] = run_group(dataclasses.replace(base, seed=seed), out / f"seed-{seed}",
                                          {key: configured(key) for key in plan.configurations}, progress=progress)
    for length in plan.lengths:
        keys = [key for key in LENGTH_CONFIGURATIONS if key in plan.configurations]
        study["lengths"][length] = run_group(
            dataclasses.replace(base, seed=plan.seeds[0], scribbles="generate", scribble_length=length),
            out / f"length-{length:g}", {key: configured(key) for key in keys}, progress=progress)
    if plan.solvers and "adm-grid" in plan.configurations:
        study["solvers"] = run_group(dataclasses.replace(base, seed=plan.seeds[0]), out / "solvers",
                                     {solver: configured("adm-grid", backend=solver) for solver in plan.solvers},
                                     progress=progress)
    study["seconds"] = time.perf_counter() - began
    return study


# --------------------------------------------------------------------------- the report

TABLE1 = (("grid_crf_loss_train", "relaxed loss train"), ("grid_crf_loss_val", "relaxed loss val"),
          ("grid_crf_energy_train", "Potts(argmax) train"), ("grid_crf_energy_val", "Potts(argmax) val"))
TABLE3 = (("accuracy", "all pixels"), ("trimap_16", "within 16 px"), ("trimap_8", "within 8 px"))


def _last(result, key):
    return result["records"][-1].get(key) if result["records"] and not result["diverged"] else None


def _spread(values, digits):
    """"mean ± std" of the finite values (std over seeds, ddof 0), or "diverged"."""
    values = [v for v in values if v is not None]
    if not values:
        return "diverged"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _name(key):
    return TABLE_CONFIGURATIONS[key][0] if key in TABLE_CONFIGURATIONS else key


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(studies: Sequence[Mapping[str, Any]], report: str | os.PathLike[str], *, preface: str = "") -> Path:
    """Write the Markdown report `report` (a section per study, after `preface`) and its figures in
    the folder beside it of the same name."""
    import os

    import torch

    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    figures = report.with_suffix("")
    figures.mkdir(exist_ok=True)
    lines = ["# Reproduction of Marin et al., CVPR 2019, with admsolve", "",
             f"Written by `admsolve reproduce` at commit {_commit()} on {platform.machine()} "
             f"({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}); "
             f"this call took {sum(s['seconds'] for s in studies) / 60:.1f} min (runs finished by earlier calls "
             f"are reused and cost nothing here; each run's own wall time is in its section).", ""]
    if preface:
        lines += [preface, ""]
    for study in studies:
        lines += _section(study, report, figures)
    report.write_text("\n".join(lines))
    return report


def _section(study, report, figures):
    from .metrics import plot_comparison

    base, plan, tables, out = study["base"], study["plan"], study["tables"], study["out"]
    seeds = list(tables)
    dataset = Path(str(base.data)).name
    lines = [f"## {dataset}", "",
             f"Data `{base.data}`; runs in `{out}`.", "",
             "Budget and settings of every run (TrainConfig, before the per-configuration lam and gamma):", "",
             "```", json.dumps({k: v for k, v in dataclasses.asdict(base).items() if k != "init"}), "```", ""]
    if study["tuning"]:
        lines += ["### Hyperparameters (chosen on the held-back fifth of train, never on val)", "",
                  _table(["configuration", "run", "values", "holdout mIoU", "chosen"],
                         [(_name(r["key"]), r["run"], json.dumps(r["values"]),
                           "diverged" if r["diverged"] else f"{r['miou']:.4f}", "yes" if r["chosen"] else "")
                          for r in study["tuning"]]), ""]
    keys = list(plan.configurations)
    if seeds:
        def column(key, metric, digits):
            return _spread([_last(tables[s][key], metric) for s in seeds], digits)

        lines += [f"### Table 1: grid-CRF loss per pixel (λ = 1 for measuring), {len(seeds)} seed(s)", ""]
        pair = [key for key in ("gd-grid", "adm-grid") if key in keys]
        lines += [_table(["configuration"] + [h for _, h in TABLE1],
                         [[_name(k)] + [column(k, m, 5) for m, _ in TABLE1] for k in pair]), ""]
        if len(pair) == 2:
            change = []
            for metric, header in TABLE1:
                gd = [_last(tables[s]["gd-grid"], metric) for s in seeds]
                adm = [_last(tables[s]["adm-grid"], metric) for s in seeds]
                ratios = [100 * (a / g - 1) for a, g in zip(adm, gd) if a is not None and g]
                change.append(_spread(ratios, 1) + " %" if ratios else "-")
            lines += ["ADM relative to GD (per seed, then mean ± std): " +
                      ", ".join(f"{h} {c}" for (_, h), c in zip(TABLE1, change)) + ".", ""]
        lines += ["### Table 2: val mIoU", "", _table(["configuration", "mIoU"],
                                                   [[_name(k), column(k, "miou", 4)] for k in keys]), ""]
        lines += ["### Table 3: val accuracy", "", _table(["configuration"] + [h for _, h in TABLE3],
                                                       [[_name(k)] + [column(k, m, 4) for m, _ in TABLE3]
                                                        for k in keys]), ""]
        first = tables[seeds[0]]
        curves = {_name(k): first[k]["records"] for k in pair}
        if curves:
            path = plot_comparison(curves, figures / f"fig3-{dataset}.png",
                                   keys=("grid_crf_loss_train", "grid_crf_energy_train", "miou"))
            lines += [f"Fig. 3 (seed {seeds[0]}): ![]({path.relative_to(report.parent)})", ""]
        lines += _diagnosis(first)
        lines += _sheet(first, Path(out) / f"seed-{seeds[0]}", figures / f"fig5-{dataset}.png", report)
    if study["lengths"]:
        lines += _lengths(study["lengths"], figures / f"fig6-{dataset}.png", report)
    if study["solvers"]:
        lines += ["### The latent solver (ADM grid, same network budget)", "",
                  _table(["solver", "eq. 8 energy of X per pixel", "eq. 8 at argmax S", "X ≠ argmax S", "mIoU",
                          "solver s"],
                         [[name, _fmt(_last(r, "train_latent_energy"), 5),
                           _fmt(_last(r, "train_latent_start_energy"), 5), _fmt(_last(r, "train_latent_changed"), 4),
                           _fmt(_last(r, "miou"), 4),
                           f"{sum(x.get('solver_time', 0.0) for x in r['records']):.0f}"]
                          for name, r in study["solvers"].items()]), ""]
    lines += [f"### Runs ({dataset})", "", _table(["run", "epochs", "wall s", "status"], _run_rows(study)), ""]
    return lines


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _diagnosis(results):
    if "adm-grid" not in results:
        return []
    rows = [[r["epoch"], r["phase"], _fmt(r.get("train_latent_start_energy"), 5), _fmt(r.get("train_latent_energy"), 5),
             _fmt(r.get("train_latent_changed"), 4), _fmt(r.get("train_proximal"), 5), _fmt(r.get("miou"), 4)]
            for r in results["adm-grid"]["records"]]
    return ["### Diagnosis: ADM grid's latent step per epoch (means over the epoch's batches)", "",
            _table(["epoch", "phase", "eq. 8 at argmax S", "eq. 8 at X", "X ≠ argmax S", "proximal loss", "val mIoU"],
                   rows), ""]


def _sheet(results, folder, path, report):
    """Fig. 5: the prediction sheets of the configurations (the same val images), stacked."""
    from PIL import Image, ImageDraw

    tiles = [(key, folder / key / "predictions.png") for key in results if (folder / key / "predictions.png").is_file()]
    if not tiles:
        return []
    pictures = [Image.open(p).convert("RGB") for _, p in tiles]
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height + 20 for p in pictures)), "white")
    top = 0
    for (key, _), picture in zip(tiles, pictures):
        ImageDraw.Draw(sheet).text((4, top + 4), _name(key), fill="black")
        sheet.paste(picture, (0, top + 20))
        top += picture.height + 20
    sheet.save(path)
    return [f"Fig. 5: ![]({path.relative_to(report.parent)})", ""]


def _lengths(groups, path, report):
    """Fig. 6: mIoU and accuracy against the scribble length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(groups, reverse=True)
    keys = list(next(iter(groups.values())))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for metric, axis in zip(("miou", "accuracy"), axes):
        for key in keys:
            axis.plot(lengths, [_last(groups[length][key], metric) or np.nan for length in lengths], marker="o",
                      label=_name(key))
        axis.set_xlabel("scribble length (0 = clicks)")
        axis.set_ylabel(metric)
        axis.invert_xaxis()
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    rows = [[f"{length:g}"] + [f"{_fmt(_last(groups[length][k], 'miou'), 4)} / {_fmt(_last(groups[length][k], 'accuracy'), 4)}"
                               for k in keys] for length in lengths]
    return ["### Fig. 6: shorter scribbles (val mIoU / accuracy, seed 0)", "",
            _table(["length"] + [_name(k) for k in keys], rows), "", f"![]({path.relative_to(report.parent)})", ""]


def _run_rows(study):
    """Every run folder of the study (pCE phases and tuning included): epochs, wall time, status."""
    rows = []
    for path in sorted(Path(study["out"]).rglob("metrics.jsonl")):
        run = path.parent
        records = _read(run)
        seconds = sum(r.get("train_time", 0.0) + r.get("eval_time", 0.0) for r in records)
        diverged = sorted(run.glob("diverged-*.pt"))
        rows.append([run.relative_to(study["out"]).as_posix(), len(records), f"{seconds:.0f}",
                     f"diverged ({diverged[0].name})" if diverged else "finished"])
    return rows
