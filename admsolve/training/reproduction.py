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

import contextlib
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

from .._files import write_text
from .._validation import describe
from ..backends import DEFAULT_PREFERENCE
from ..energies import GridCRF
from ..data import open_dataset
from ..data.io import write_image
from .checkpoints import lock_folder
from .comparison import _run, _unused_to_defaults
from .config import CONFIGURATIONS, FOLDER_DEFAULTS, TrainConfig
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
#: The fewest iterations a latent solver gets in the ablation, where the base's ``max_iter`` (the paper's 5
#: sweeps of moves) would stop it before it converges: relaxed GD takes tens of steps from its one-hot
#: start and stops by itself once converged (at 5 it leaves X = argmax S: ADM without a latent step).
SOLVER_ITERATIONS = {"relaxed-gd": 50}
#: Fewest training images a study accepts (the held-back fifth must hold some).
MIN_TRAIN_IMAGES = 10
#: Widest Fig. 5 in pixels (the stacked prediction sheets are scaled down to it).
SHEET_WIDTH = 640
#: The gamma ADM is tuned from when the base configuration gives none (then the others of the gamma grid).
STUDY_GAMMA = 2.0
#: The factor gamma grows by over the regularized phase in the "gamma-growth" variant (:func:`variants`).
GAMMA_GROWTH = 4.0


def variants(epochs: int) -> dict[str, dict[str, Any]]:
    """The changes to ADM grid tried on the held-back fifth of train (the diagnosis), for a regularized
    phase of `epochs` epochs: name -> settings.

    "gamma-growth" is the paper's footnote, gamma increasing: the same factor each epoch, GAMMA_GROWTH
    from the first epoch to the last whatever their number (2 per epoch over 3 epochs).
    """
    return {"restricted": {"restrict_labels": True},
            "gamma-growth": {"gamma_growth": GAMMA_GROWTH ** (1 / max(epochs - 1, 1))},
            "stride-2": {"latent_stride": 2}, "stride-4": {"latent_stride": 4}}


@dataclasses.dataclass
class Plan:
    """What the study runs; the budget of every run comes from the base TrainConfig.

    ``variants`` are changes to ADM grid measured on the held-back fifth of train at its chosen lam
    and gamma (the diagnosis of ADM against GD): name -> settings; None: :func:`variants` of the
    base's epochs.
    """

    seeds: tuple = (0, 1, 2)
    configurations: tuple = tuple(TABLE_CONFIGURATIONS)
    lam_grid: tuple = (0.5, 2.0, 8.0, 32.0)
    gamma_grid: tuple = (1.0, 4.0)
    lengths: tuple = (1.0, 0.5, 0.3, 0.0)
    solvers: tuple = SOLVERS
    variants: dict | None = None
    tune: bool = True

    def __post_init__(self):
        for name in ("seeds", "configurations", "lam_grid", "gamma_grid", "lengths", "solvers"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.variants is not None:
            self.variants = {str(name): dict(settings) for name, settings in self.variants.items()}


def _settings(key):
    if key in TABLE_CONFIGURATIONS:
        return dict(TABLE_CONFIGURATIONS[key][1])
    raise ValueError(f"configurations: expected keys among {', '.join(TABLE_CONFIGURATIONS)}, got {key!r}")


def _finished(records, config):
    """Whether a run's `records` (its metrics.jsonl) reach the last epoch of `config`."""
    return bool(records) and records[-1]["epoch"] >= config.total_epochs


def _read(folder):
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


#: The file a run that diverged leaves in its folder (its message), so that it is reported and not retried.
DIVERGED = "diverged.txt"


def _collect(config, folder):
    """What a run folder holds, without training: {"config", "records" (those of a finished run,
    else none), "diverged" (its message or None), "status"}."""
    diverged = (folder / DIVERGED).read_text().strip() if (folder / DIVERGED).is_file() else None
    records = _read(folder)
    finished = _finished(records, config)
    status = "diverged" if diverged else "finished" if finished else "not run"
    return {"config": config, "records": records if finished or diverged else [], "diverged": diverged,
            "status": status}


def run_group(base: TrainConfig, folder: str | os.PathLike[str], configurations: Mapping[str, Mapping[str, Any]], *,
              progress: bool = True, train: bool = True) -> dict[str, dict[str, Any]]:
    """Train one group: the shared pCE phase, then each configuration from it.

    Parameters
    ----------
    base : TrainConfig
        Data, network, budget; ``pretrain_epochs`` of pCE shared, then ``epochs`` per configuration.
    folder : Path
    configurations : dict of str to dict
        Run name -> the settings that differ from `base`.
    train : bool, optional
        False: only read what the runs left (for a report while the study is under way).

    Returns
    -------
    dict of str to dict
        Run name -> {"config": TrainConfig, "records": list, "diverged": message or None,
        "status": "finished", "diverged" or "not run"}.
    """
    folder = Path(folder)
    configs = {name: _unused_to_defaults(dataclasses.replace(base, **settings, pretrain_epochs=0))
               for name, settings in configurations.items()}
    init = None
    if base.pretrain_epochs > 0:
        init = str((folder / "pretrain" / "checkpoint.pt").resolve())
        pretrain = _unused_to_defaults(dataclasses.replace(base, optimizer="gd", regularizer="none", epochs=0,
                                                           init=None))
        checkpoint = folder / "pretrain" / "checkpoint.pt"
        waiting = [name for name, config in configs.items()
                   if not _finished(_read(folder / name), config) and not (folder / name / DIVERGED).is_file()]
        if train and (waiting or not _finished(_read(folder / "pretrain"), pretrain)):
            folder.mkdir(parents=True, exist_ok=True)
            if not checkpoint.is_file() and (folder / "pretrain").is_dir():
                shutil.rmtree(folder / "pretrain")  # its network is needed again and was not kept
            _run(pretrain, folder / "pretrain", progress)
    results = {}
    for name, config in configs.items():
        config = dataclasses.replace(config, init=init)
        if train and not (folder / name / DIVERGED).is_file():
            try:
                _run(config, folder / name, progress)
            except TrainingDiverged as exc:
                write_text(folder / name / DIVERGED, f"{exc}\n")
        results[name] = _collect(config, folder / name)
    return results


def _score(result):
    """mIoU of a run's last evaluation (-1 when it diverged or has none)."""
    return result["records"][-1]["miou"] if result["status"] == "finished" else -1.0


def tune(base: TrainConfig, folder: str | os.PathLike[str], plan: Plan, *,
         progress: bool = True, train: bool = True) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Choose lam (and gamma for ADM) per configuration on the held-back fifth of train.

    Every configuration with a regularizer is trained with each lam of ``plan.lam_grid`` (ADM with
    base's gamma, or :data:`STUDY_GAMMA`); ADM configurations are then trained at their best lam with each other gamma of
    ``plan.gamma_grid``. The best holdout mIoU wins (ties: the first tried). pCE only, with the same
    budget, is the reference row (what a regularizer adds to).

    Returns ``(chosen, rows)``: {key: settings to add} for each configuration whose runs finished,
    and every tried run with its holdout mIoU (and its collected ``result``).
    """
    fit = _fit(base)
    first_gamma = STUDY_GAMMA if base.gamma is None else base.gamma
    regularized = [key for key in plan.configurations if _settings(key)["regularizer"] != "none"]
    tried = {key: {f"{key}-lam{lam:g}": {"lam": lam, **({"gamma": first_gamma} if _settings(key)["optimizer"] == "adm"
                                                         else {})}
                   for lam in plan.lam_grid} for key in regularized}
    reference = {"pce": _settings("pce")} if "pce" in plan.configurations else {}  # what the regularizers add to
    results = run_group(fit, folder, {**{name: {**_settings(key), **values} for key in regularized
                                         for name, values in tried[key].items()}, **reference},
                        progress=progress, train=train)
    rows = [{"key": "pce", "run": "pce", "values": {}, "miou": _score(results["pce"]),
             "status": results["pce"]["status"], "chosen": False, "result": results["pce"]} for _ in reference]
    chosen = {}
    for key in regularized:
        best = max(tried[key], key=lambda name: _score(results[name]))
        if _settings(key)["optimizer"] == "adm":
            lam = tried[key][best]["lam"]
            tried[key][best] = {"lam": lam, "gamma": first_gamma}
            more = {f"{key}-lam{lam:g}-gamma{gamma:g}": {"lam": lam, "gamma": gamma}
                    for gamma in plan.gamma_grid if gamma != first_gamma}
            results.update(run_group(fit, folder, {name: {**_settings(key), **values} for name, values in more.items()},
                                     progress=progress, train=train))
            tried[key].update(more)
            best = max([best, *more], key=lambda name: _score(results[name]))
        if all(results[name]["status"] != "not run" for name in tried[key]):
            chosen[key] = tried[key][best]
        rows += [{"key": key, "run": name, "values": values, "miou": _score(results[name]),
                  "status": results[name]["status"], "chosen": key in chosen and name == best,
                  "result": results[name]}
                 for name, values in tried[key].items()]
    return chosen, rows


def _fit(base):
    """`base` trained on the fit part of train and scored on its held-back fifth (seed 0)."""
    return dataclasses.replace(base, train_split="train-fit", val_split="train-holdout", seed=0)


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


#: The file of a study's folder that records its base configuration and plan (for later reports).
STUDY_FILE = "study.json"


def load_study(folder: str | os.PathLike[str]) -> tuple[TrainConfig, Plan]:
    """The base configuration and plan a study folder was run with (its ``study.json``)."""
    return load_description(Path(folder) / STUDY_FILE, Plan)


def load_description(path: Path, plan_type: type) -> tuple[TrainConfig, Any]:
    """The base configuration and the plan (of `plan_type`) a study's description file `path` holds."""
    try:
        stored = json.loads(path.read_text())
        return TrainConfig.from_dict(stored["base"]), plan_type(**stored["plan"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"study: {str(path)!r} is not a study description of admsolve reproduce "
                         f"({type(exc).__name__}: {exc})") from None


def first_study_settings(config: TrainConfig) -> TrainConfig:
    """`config` with the settings it leaves to :data:`~admsolve.training.config.FOLDER_DEFAULTS` set as this
    study ran them, before those defaults were the authors' regime: the pCE phase's optimizer, lr and schedule
    carried on, argmax S, all labels, no dropout (a config.json of that time reads so). Its runs stay
    comparable, and resumable, whatever the defaults of dataset folders."""
    values = {name: value for name, value in dataclasses.asdict(config).items()
              if not (name in FOLDER_DEFAULTS and value is None)}
    return TrainConfig.from_dict(values)


def reproduce(base: TrainConfig, out: str | os.PathLike[str], plan: Plan | None = None, *,
              progress: bool = True, train: bool = True) -> dict[str, Any]:
    """Run (or continue) the study on ``base.data`` under `out`.

    Parameters
    ----------
    base : TrainConfig
        Data, network and budget shared by every run; lam and gamma are chosen per configuration
        on the held-back fifth of train when ``plan.tune`` (else base's values are used).
    out : str or Path
        Folder of the study's runs (one group per subfolder; finished runs are reused) and of its
        ``study.json`` (base and plan, read by :func:`load_study`).
    plan : Plan, optional
    train : bool, optional
        False: train nothing, only gather what the runs finished so far (a report of a study under way;
        runs not finished are shown as "not run").

    Returns
    -------
    dict
        Everything the report shows (:func:`write_report`): "base", "plan", "out", "tuning",
        "chosen", "variants", "tables" (per seed), "lengths", "solvers", "seconds".

    The groups run in this order (the most telling first, for a study that spans sittings): tuning,
    the first seed of Tables 1-3, the variants, the solver ablation (in the first seed's group: its
    ADM grid run is the default solver's), the other seeds, the scribble lengths (the base length,
    when the scribbles are generated, is the first seed's group itself). The groups after the first
    seed's evaluate at the end of each phase only (``eval_every``): the curves per epoch are the first
    seed's.
    """
    plan = Plan() if plan is None else plan
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base: expected a TrainConfig, got {describe(base)}")
    base = first_study_settings(base)
    if plan.variants is None:
        plan = dataclasses.replace(plan, variants=variants(base.epochs))
    for key in plan.configurations:
        _settings(key)
    if not plan.seeds:
        raise ValueError("seeds: expected at least one seed, got none")
    check_data(base.data)
    out, began = Path(out), time.perf_counter()
    if train:
        out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out, "out") if train else contextlib.nullcontext():  # one process writes a study
        if train:
            write_text(out / STUDY_FILE, json.dumps({"base": dataclasses.asdict(base),
                                                     "plan": dataclasses.asdict(plan)}, indent=1) + "\n")
        study: dict[str, Any] = {"base": base, "plan": plan, "out": out, "tuning": [], "chosen": {}, "variants": {},
                                 "tables": {}, "lengths": {}, "solvers": {}}
        if plan.tune:
            study["chosen"], study["tuning"] = tune(base, out / "tuning", plan, progress=progress, train=train)
        tuned = not plan.tune or all(key in study["chosen"] for key in plan.configurations
                                     if _settings(key)["regularizer"] != "none")
        if not tuned:
            train = False  # the later groups need the chosen values: report what there is

        def configured(key, **extra):
            return {**_settings(key), **study["chosen"].get(key, {}), **extra}

        # The curves per epoch (Fig. 3, the diagnosis) are the first seed's: the later groups evaluate at the end of
        # each phase only, a third of their time saved (their training is the same: evaluating changes nothing in it)
        later = dataclasses.replace(base, eval_every=base.total_epochs)

        def seed_group(seed, budget):
            study["tables"][seed] = run_group(dataclasses.replace(budget, seed=seed), out / f"seed-{seed}",
                                              {key: configured(key) for key in plan.configurations},
                                              progress=progress, train=train)

        seed_group(plan.seeds[0], base)
        if plan.variants and "adm-grid" in plan.configurations:
            # the reference is the tuning run of the chosen values itself
            chosen = [row["run"] for row in study["tuning"] if row["key"] == "adm-grid" and row["chosen"]]
            study["variants"] = run_group(_fit(base), out / "tuning",
                                          {(chosen or ["adm-grid"])[0]: configured("adm-grid"),
                                           **{f"adm-grid-{name}": configured("adm-grid", **settings)
                                              for name, settings in plan.variants.items()}},
                                          progress=progress, train=train)
        first = out / f"seed-{plan.seeds[0]}"
        if plan.solvers and "adm-grid" in plan.configurations:
            default = DEFAULT_PREFERENCE[GridCRF][0]
            group = run_group(dataclasses.replace(base, seed=plan.seeds[0]), first,
                              {f"adm-grid-{solver}": configured(
                                  "adm-grid", backend=solver, max_iter=max(base.max_iter, SOLVER_ITERATIONS.get(solver, 0)))
                               for solver in plan.solvers if solver != default}, progress=progress, train=train)
            study["solvers"] = {solver: study["tables"][plan.seeds[0]]["adm-grid"] if solver == default
                                else group[f"adm-grid-{solver}"] for solver in plan.solvers}
        for seed in plan.seeds[1:]:
            seed_group(seed, later)
        generated = open_dataset(base.data, "train", scribbles=base.scribbles).scribble_source.startswith("generated")
        for length in plan.lengths:
            keys = [key for key in LENGTH_CONFIGURATIONS if key in plan.configurations]
            if generated and length == base.scribble_length:
                study["lengths"][length] = {key: study["tables"][plan.seeds[0]][key] for key in keys}
                continue
            study["lengths"][length] = run_group(
                dataclasses.replace(later, seed=plan.seeds[0], scribbles="generate", scribble_length=length),
                out / f"length-{length:g}", {key: configured(key) for key in keys}, progress=progress, train=train)
        study["seconds"] = time.perf_counter() - began
        return study


# --------------------------------------------------------------------------- the report

TABLE1 = (("grid_crf_loss_train", "relaxed loss train"), ("grid_crf_loss_val", "relaxed loss val"),
          ("grid_crf_energy_train", "Potts(argmax) train"), ("grid_crf_energy_val", "Potts(argmax) val"))
TABLE3 = (("accuracy", "all pixels"), ("trimap_16", "within 16 px"), ("trimap_8", "within 8 px"))


def _last(result, key):
    """`key` of a finished run's last record (None otherwise)."""
    return result["records"][-1].get(key) if result["status"] == "finished" else None


def _cell(results, key, digits):
    """"mean ± std" of `key` over the finished runs of `results` (std over seeds, ddof 0), noting
    the runs that diverged or have not run yet."""
    values = [_last(result, key) for result in results]
    values = [value for value in values if value is not None]
    notes = [f"{count} {status}" for status in ("diverged", "not run")
             if (count := sum(result["status"] == status for result in results))]
    if not values:
        return "diverged" if any(result["status"] == "diverged" for result in results) else "not run"
    text = f"{values[0]:.{digits}f}" if len(values) == 1 else f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"
    return f"{text} ({', '.join(notes)})" if notes else text


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
             (f"Written by `admsolve reproduce` at commit {_commit()} on {platform.machine()} "
              f"({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}); "
              f"this call took {sum(s['seconds'] for s in studies) / 60:.1f} min (runs finished by earlier calls "
              f"are reused and cost nothing here; each run's own wall time is in its section)."), ""]
    if preface:
        lines += [preface, ""]
    # the most complete study first (a study under way reads "not run" in most cells)
    from . import regime

    for study in sorted(studies, key=lambda study: -sum(row[3] == "finished" for row in _run_rows(study))):
        lines += (regime.section if study.get("kind") == "authors" else _section)(study, report, figures)
    write_text(report, "\n".join(lines))
    return report


def _differences(results_a, results_b, key, relative=False):
    """Per seed, `key` of run a minus run b (relative: in % of b), where both finished."""
    pairs = [(_last(a, key), _last(b, key)) for a, b in zip(results_a, results_b)]
    return [100 * (x / y - 1) if relative else x - y for x, y in pairs if x is not None and y is not None and (y or not relative)]


def _describe_differences(values, digits, unit=""):
    spread = f" ± {np.std(values):.{digits}f}" if len(values) > 1 else ""
    higher = sum(v > 0 for v in values)
    return f"{np.mean(values):+.{digits}f}{spread}{unit} (higher in {higher} of {len(values)} seed(s))"


def _findings(study):
    """The study's questions answered from its tables: differences per seed, mean ± std, and how many
    seeds agree, so that "no" and "not at this scale" read as plainly as "yes"."""
    tables, seeds, keys = study["tables"], list(study["tables"]), list(study["plan"].configurations)
    lines = ["### Answers (computed from the tables below; differences per seed, then mean ± std)", ""]

    def runs(key):
        return [tables[s][key] for s in seeds] if key in keys else []

    def compared(text, a, b, key, digits, relative=False, unit=""):
        values = _differences(a, b, key, relative)
        if values:  # only what has been measured
            lines.append(f"- {text}: {_describe_differences(values, digits, unit)}.")

    for key, header in TABLE1:
        compared(f"Grid-CRF {header}, ADM grid relative to GD grid", runs("adm-grid"), runs("gd-grid"), key, 1,
                 relative=True, unit=" %")
    pairs = _equal_lam_pairs(study)
    if pairs:
        changes = ", ".join(f"λ {lam:g} {_relative(_objective(adm, lam), _objective(gd, lam))}" for lam, gd, adm in pairs)
        lower = sum(_objective(adm, lam) < _objective(gd, lam) for lam, gd, adm in pairs)
        relaxed = ", ".join(f"λ {lam:g} {_relative(_last(adm, 'grid_crf_loss_train'), _last(gd, 'grid_crf_loss_train'))}"
                            for lam, gd, adm in pairs)
        lines.append(f"- The same λ for both (the tuning runs, held-back fifth of train, one seed), ADM grid relative to "
                     f"GD grid: pCE + λ·R(S) on train {changes} (lower in {lower} of {len(pairs)} λ); R(S) alone "
                     f"{relaxed}.")
    for key, header in (("miou", "val mIoU"), ("trimap_8", "accuracy within 8 px of boundaries"),
                        ("trimap_16", "accuracy within 16 px"), ("accuracy", "accuracy")):
        compared(f"{header}, ADM grid minus GD grid", runs("adm-grid"), runs("gd-grid"), key, 4)
    for key in keys:
        if key not in ("pce", "full"):
            compared(f"val mIoU, {_name(key)} minus pCE only", runs(key), runs("pce"), "miou", 4)
    for length, group in sorted(study["lengths"].items(), reverse=True):
        if "adm-grid" in group and "gd-grid" in group:
            compared(f"Scribble length {length:g}: val mIoU ADM grid minus GD grid", [group["adm-grid"]],
                     [group["gd-grid"]], "miou", 4)
    finished = {name: r for name, r in study["solvers"].items() if r["status"] == "finished"}
    if len(finished) > 1:
        best = min(finished, key=lambda name: _last(finished[name], "train_latent_energy"))
        top = max(finished, key=lambda name: _last(finished[name], "miou"))
        lines.append(f"- Latent solvers: the lowest eq. 8 energy of X is {best}'s, the best val mIoU {top}'s; "
                     f"mIoU ranges {min(_last(r, 'miou') for r in finished.values()):.4f}–"
                     f"{max(_last(r, 'miou') for r in finished.values()):.4f} over {len(finished)} solvers (one seed).")
    variants = {name: r for name, r in study["variants"].items() if r["status"] == "finished"}
    if len(variants) > 1:
        reference = next(iter(study["variants"]))
        if reference in variants:
            ranked = ", ".join(f"{name} {_last(r, 'miou') - _last(variants[reference], 'miou'):+.4f}"
                               for name, r in variants.items() if name != reference)
            lines.append(f"- Changes to ADM grid, holdout mIoU minus the chosen setting's ({reference}, "
                         f"{_last(variants[reference], 'miou'):.4f}): {ranked} (one seed).")
    return lines + [""] if len(lines) > 2 else lines + ["Nothing to answer yet: the runs the answers compare have "
                                                        "not finished.", ""]


def _section(study, report, figures):
    from .metrics import plot_comparison

    base, plan, tables, out = study["base"], study["plan"], study["tables"], study["out"]
    seeds = list(tables)
    dataset = Path(str(base.data)).name
    lines = [f"## {dataset}", "",
             f"Data `{base.data}`; runs in `{out}`.", "",
             "Budget and settings of every run (TrainConfig, before the per-configuration lam and gamma):", "",
             "```", json.dumps({k: v for k, v in dataclasses.asdict(base).items() if k != "init"}), "```", "",
             (f"The groups after seed {plan.seeds[0]}'s (the other seeds, the scribble lengths) evaluate at the end "
              "of each phase only; their training is the same."), ""]
    lines += _findings(study)
    if study["tuning"]:
        lines += ["### Hyperparameters (chosen on the held-back fifth of train, never on val)", "",
                  _table(["configuration", "run", "values", "holdout mIoU", "chosen"],
                         [(_name(r["key"]), r["run"], json.dumps(r["values"]),
                           f"{r['miou']:.4f}" if r["status"] == "finished" else r["status"], "yes" if r["chosen"] else "")
                          for r in study["tuning"]]), ""]
    lines += _equal_lam(study)
    keys = list(plan.configurations)
    if seeds:
        def column(key, metric, digits):
            return _cell([tables[s][key] for s in seeds], metric, digits)

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
                change.append(f"{np.mean(ratios):.1f} ± {np.std(ratios):.1f} %" if ratios else "-")
            lines += ["ADM relative to GD (per seed, then mean ± std): " +
                      ", ".join(f"{h} {c}" for (_, h), c in zip(TABLE1, change)) + ".", ""]
        lines += ["### Table 2: val mIoU", "", _table(["configuration", "mIoU"],
                                                   [[_name(k), column(k, "miou", 4)] for k in keys]), ""]
        lines += ["### Table 3: val accuracy", "", _table(["configuration"] + [h for _, h in TABLE3],
                                                       [[_name(k)] + [column(k, m, 4) for m, _ in TABLE3]
                                                        for k in keys]), ""]
        first = tables[seeds[0]]
        curves = {_name(k): first[k]["records"] for k in pair if first[k]["records"]}
        if curves:
            path = plot_comparison(curves, figures / f"fig3-{dataset}.png",
                                   keys=("grid_crf_loss_train", "grid_crf_energy_train", "miou"))
            lines += [f"Fig. 3 (seed {seeds[0]}): ![]({path.relative_to(report.parent)})", ""]
        lines += _diagnosis(first)
        lines += _sheet(first, Path(out) / f"seed-{seeds[0]}", figures / f"fig5-{dataset}.jpg", report)
    if study["lengths"]:
        lines += _lengths(study["lengths"], figures / f"fig6-{dataset}.png", report)
    if study["solvers"]:
        lines += [f"### The latent solver (ADM grid, same network budget, seed {plan.seeds[0]})", "",
                  _table(["solver", "iterations", "eq. 8 at argmax S", "eq. 8 at X", "X ≠ argmax S", "mIoU",
                          "solver s"],
                         [[name, r["config"].max_iter, *_latent_columns(r), _value(r, "miou", 4), _solver_seconds(r)]
                          for name, r in study["solvers"].items()]),
                  "", ("Eq. 8 energies are per pixel, means over the last epoch's batches. Iterations: the cap per "
                       "latent step (sweeps of moves; relaxed GD's steps, which stop once converged)."), ""]
    if study["variants"]:
        lines += ["### Diagnosis: changes to ADM grid on the held-back fifth of train", "",
                  _table(["run", "settings", "holdout mIoU", "eq. 8 at argmax S", "eq. 8 at X", "X ≠ argmax S",
                          "pCE", "proximal", "solver s"],
                         [[name, json.dumps({k: v for k, v in dataclasses.asdict(r["config"]).items()
                                             if k in DIAGNOSED}), _value(r, "miou", 4), *_latent_columns(r),
                           _value(r, "train_pce", 4), _value(r, "train_proximal", 4), _solver_seconds(r)]
                          for name, r in study["variants"].items()]), ""]
    lines += [f"### Runs ({dataset})", "", _table(["run", "epochs", "wall s", "status"], _run_rows(study)), ""]
    return lines


def _equal_lam_pairs(study):
    """(lam, GD grid's result, ADM grid's result) for each lam of the grid both finished in the tuning (ADM at
    its first gamma): the paper's comparison, the same objective pCE + lam R for both optimizers."""
    runs = {row["run"]: row["result"] for row in study["tuning"] if row["status"] == "finished"}
    return [(lam, runs[f"gd-grid-lam{lam:g}"], runs[f"adm-grid-lam{lam:g}"]) for lam in study["plan"].lam_grid
            if f"gd-grid-lam{lam:g}" in runs and f"adm-grid-lam{lam:g}" in runs]


def _relative(value, reference):
    return f"{100 * (value / reference - 1):+.1f} %"


def _objective(result, lam):
    """pCE + lam R(S) on train: the last epoch's mean pCE over its steps, plus lam times the relaxed grid-CRF
    loss of the final network on the training images (measured at lam 1)."""
    return _last(result, "train_pce") + lam * _last(result, "grid_crf_loss_train")


#: The columns of the comparison at the same lam: (metric, header), read from each run's last record.
EQUAL_LAM = (("grid_crf_loss_train", "R(S) train"), ("grid_crf_loss_val", "R(S) holdout"),
             ("grid_crf_energy_train", "Potts(argmax) train"), ("train_pce", "pCE train"), ("miou", "holdout mIoU"))


def _equal_lam(study):
    """Table 1 as the paper measures it: GD grid and ADM grid trained with the same lam (the tuning runs)."""
    pairs = _equal_lam_pairs(study)
    if not pairs:
        return []
    rows = [[f"{lam:g}", *(f"{_last(gd, metric):.4f} / {_last(adm, metric):.4f}" for metric, _ in EQUAL_LAM),
             f"{_objective(gd, lam):.4f} / {_objective(adm, lam):.4f}"] for lam, gd, adm in pairs]
    return ["### GD grid against ADM grid at the same λ (the tuning runs: held-back fifth of train, one seed)", "",
            _table(["λ", *(f"{header} (GD / ADM)" for _, header in EQUAL_LAM), "pCE + λ·R(S) train (GD / ADM)"], rows),
            "", ("R(S): the relaxed grid-CRF loss of the final network, per pixel at λ = 1; pCE train: the mean over "
                 "the last epoch's steps. The tables below compare each optimizer at its own chosen λ."), ""]


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _value(result, key, digits):
    """`key` of a run's last record, or the run's status when it did not finish."""
    return _fmt(_last(result, key), digits) if result["status"] == "finished" else result["status"]


#: Settings shown in the table of variants.
DIAGNOSED = ("lam", "gamma", "gamma_growth", "restrict_labels", "latent_stride", "max_iter", "backend")


def _latent_columns(result):
    """A run's eq. 8 energy at argmax S and at X and the share of pixels X changed (last epoch)."""
    return [_value(result, "train_latent_start_energy", 5), _value(result, "train_latent_energy", 5),
            _value(result, "train_latent_changed", 4)]


def _solver_seconds(result):
    return f"{sum(r.get('solver_time', 0.0) for r in result['records']):.0f}" if result["records"] else "-"


def _diagnosis(results):
    if "adm-grid" not in results:
        return []
    rows = [[r["epoch"], _fmt(r.get("gamma"), 2), _fmt(r.get("train_latent_start_energy"), 5),
             _fmt(r.get("train_latent_energy"), 5), _fmt(r.get("train_latent_changed"), 4),
             _fmt(r.get("train_confidence"), 4), _fmt(r.get("train_pce"), 4), _fmt(r.get("train_proximal"), 4),
             _fmt(r.get("miou"), 4)]
            for r in results["adm-grid"]["records"]]
    return ["### Diagnosis: ADM grid's latent step per epoch (means over the epoch's batches)", "",
            _table(["epoch", "gamma", "eq. 8 at argmax S", "eq. 8 at X", "X ≠ argmax S", "confidence of S", "pCE",
                    "proximal", "val mIoU"], rows), "",
            "Confidence of S: the mean of max_k S_p over unscribbled pixels, before the step.", ""]


def _sheet(results, folder, path, report):
    """Fig. 5: the prediction sheets of the configurations (the same val images), stacked."""
    from PIL import Image, ImageDraw

    tiles = [(key, folder / key / "predictions.png") for key in results if (folder / key / "predictions.png").is_file()]
    if not tiles:  # the runs' own sheets are not kept with their records: a sheet drawn before stands
        return [f"Fig. 5: ![]({path.relative_to(report.parent)})", ""] if path.is_file() else []
    pictures = [Image.open(p).convert("RGB") for _, p in tiles]
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height + 20 for p in pictures)), "white")
    top = 0
    for (key, _), picture in zip(tiles, pictures):
        ImageDraw.Draw(sheet).text((4, top + 4), _name(key), fill="black")
        sheet.paste(picture, (0, top + 20))
        top += picture.height + 20
    if sheet.width > SHEET_WIDTH:  # a figure for reading in the repository, not the runs' full-size sheets
        sheet = sheet.resize((SHEET_WIDTH, round(sheet.height * SHEET_WIDTH / sheet.width)), Image.LANCZOS)
    write_image(path, sheet, "sheet", quality=80)  # JPEG: photographs (a PNG of the stacked sheets weighs megabytes)
    return [f"Fig. 5: ![]({path.relative_to(report.parent)})", ""]


def _lengths(groups, path, report):
    """Fig. 6: mIoU and accuracy against the scribble length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import save_figure

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
    save_figure(figure, path)
    plt.close(figure)
    rows = [[f"{length:g}"] + [f"{_value(groups[length][k], 'miou', 4)} / {_value(groups[length][k], 'accuracy', 4)}"
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
        config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        status = ("diverged" if (run / DIVERGED).is_file() else "finished" if _finished(records, config)
                  else f"stopped after {len(records)} of {config.total_epochs} epochs (under way, or to resume)")
        rows.append([run.relative_to(study["out"]).as_posix(), len(records), f"{seconds:.0f}", status])
    return rows
