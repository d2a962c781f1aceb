"""The study of ADM in its authors' regime (issue 19): does ADM grid beat GD grid, and pCE, when trained
as the authors' public code trains it, and which difference from our first study decides?

The regime, read from the authors' code (github.com/dmitrii-marin/adm-seg: ``run_pascal_scribble.sh``,
``solverwithgc.prototxt``, ``trainwithgc.prototxt``, ``graphcut_layer.cpp``), in TrainConfig's terms
(:data:`AUTHORS`): eq. 8 with unaries ``-log S`` (gamma 1) and a Potts weight of 80 on the contrast
weights; eq. 7's cross-entropy towards X weighted 1.5 (``proximal_weight``); the regularized phase a
fine-tuning of the pCE network by SGD (momentum 0.9, weight decay 5e-4) at lr 1e-4, divided by 10 after
each third; alpha-expansion starting from label 0; dropout 0.5 before the classifier, active when the
latent step reads S. Crop padding is kept out of every loss (admsolve's valid-pixel mask; the authors'
layer had its padding check commented out). Two choices stay ours: the pCE phase (Adam, poly schedule,
the pretrained effnet-lite0) and the scribbles as hard constraints of eq. 8.

The study's parts, per dataset, each a group of :func:`~admsolve.training.reproduction.run_group`:

- ``tuning/``: on the held-back fifth of train (``train-fit`` to fit, ``train-holdout`` to score, seed
  0), a pCE phase of ``pretrain_epochs`` (its holdout curve shows whether it stopped rising), then
  regularized phases of ``tuning_epochs``: first the fine-tuning optimizer and lr (:attr:`RegimePlan.finetune`,
  ADM grid at the authors' values), then with it ADM grid's lam/gamma at the authors' proximal weight,
  the other proximal weights at the best ratio, and GD grid's lam; pCE continued is the reference.
- ``main/``: the main table, one pCE phase on all of train (the first seed) shared by every seed's
  fine-tunings of ``epochs`` (pCE, GD grid and ADM grid per seed, then GD dense and ADM dense on the
  last): the spread over seeds is that of the fine-tuning, which is what the optimizers differ in. The
  pCE network is not kept in the repository: where a sitting finds it gone, the group retrains it (same
  settings, not bit-identical across machines), and the runs still to train start from the new one; the
  dense runs, last of all, share the last seed's start.
- the ablation, in ``tuning/`` (``ablation-<difference>``): the chosen ADM grid with one difference taken
  back to the first study's setting at a time (:data:`OURS`), fine-tuned as the tuning runs are and scored
  on the held-back fifth against the chosen run itself.

Budget (issue 19, item 5: about 10 hours of 2 CPU cores in all): in this regime ADM's latent step
costs about 3x the network's step at 224 x 224 crops (alpha-expansion with lam / gamma = 80), so the
main table's fine-tuning runs ``epochs`` = 8 (2.7x the first study's steps, not the 5x first planned),
the ablation runs at the tuning length, and from the second tuning stage on ADM expands only on the
labels of argmax S and of the scribbles (``restrict_labels``), which gave the same X as all 21 labels
on 80 of 80 latent problems of this regime at 2.1x the speed (measured before it was adopted; the
first tuning stage ran with all labels). Rerun restricted, that stage's run at ratio 80 was bit-identical
over all its steps; one at ratio 16 run both ways first differed at step 14 of 144.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from .._files import write_text
from .._validation import describe
from .checkpoints import lock_folder
from .config import NETWORK_OPTIMIZERS, TrainConfig
from .reproduction import TABLE_CONFIGURATIONS, _fit, _score, check_data, load_description, run_group

#: The authors' regime in TrainConfig's terms (see the module's docstring). lam is eq. 8's Potts weight
#: with gamma 1: the ratio lam / gamma that decides X.
AUTHORS = {"finetune_optimizer": "sgd", "finetune_lr": 1e-4, "finetune_schedule": "step", "gamma": 1.0,
           "lam": 80.0, "proximal_weight": 1.5, "latent_init": "label-0", "dropout": 0.5}
#: The ablation: per difference, the first study's setting that replaces the regime's (lam 4 with gamma 1 is
#: that study's ratio, lam 8 / gamma 2; its fine-tuning was Adam at 1e-3, poly, over 3 epochs).
OURS = {"padding": {"padding_in_losses": True},
        "ratio": {"lam": 4.0},
        "schedule-and-length": {"finetune_optimizer": "adam", "finetune_lr": 1e-3, "finetune_schedule": "poly",
                                "epochs": 3},  # (3 epochs, against the tuning length the ablation runs at)
        "proximal-weight": {"proximal_weight": None},
        "start": {"latent_init": "argmax"},
        "dropout": {"dropout": 0.0}}  # (in the fine-tuning: the ablation starts from the regime's pCE phase)
#: The file of a regime study's folder that records its base and plan.
REGIME_FILE = "regime.json"


@dataclasses.dataclass
class RegimePlan:
    """What the regime study runs. The budget of every run comes from the base TrainConfig but for the
    lengths here: ``pretrain_epochs`` of pCE (every group), ``tuning_epochs`` of fine-tuning on the
    held-back fifth (the tuning and the ablation), ``epochs`` of fine-tuning in the main table.
    ``restrict_labels``: ADM's expansion moves only to the labels of argmax S and the scribbles in every
    run after the first tuning stage (see the module's docstring); such runs' names end in
    ``-restricted``."""

    seeds: tuple = (0, 1, 2)
    pretrain_epochs: int = 12
    tuning_epochs: int = 4
    epochs: int = 8
    finetune: tuple = (("sgd", 1e-4), ("sgd", 3e-4), ("sgd", 1e-3), ("adam", 1e-4), ("adam", 3e-4), ("adam", 1e-3))
    ratios: tuple = (16.0, 40.0, 80.0, 160.0)
    proximal_weights: tuple = (1.0, 1.5)
    gd_lams: tuple = (0.5, 2.0, 8.0, 16.0, 32.0)
    dense: tuple = (("gd-dense", 0.5), ("adm-dense", 0.5))
    ablation: tuple = tuple(OURS)
    restrict_labels: bool = True

    def __post_init__(self):
        self.seeds = tuple(int(seed) for seed in self.seeds)
        self.finetune = tuple((str(kind), float(lr)) for kind, lr in self.finetune)
        for kind, lr in self.finetune:
            if kind not in NETWORK_OPTIMIZERS or not lr > 0:
                raise ValueError(f"finetune: expected (optimizer in {NETWORK_OPTIMIZERS}, lr > 0) pairs, "
                                 f"got {(kind, lr)!r}")
        for name in ("ratios", "proximal_weights", "gd_lams"):
            setattr(self, name, tuple(float(value) for value in getattr(self, name)))
        self.dense = tuple((str(key), float(lam)) for key, lam in self.dense)
        unknown = [name for name in self.ablation if name not in OURS]
        if unknown:
            raise ValueError(f"ablation: expected names among {', '.join(OURS)}, got {', '.join(unknown)}")
        self.ablation = tuple(self.ablation)
        if not self.seeds or not self.finetune:
            raise ValueError("seeds, finetune: expected at least one each")


def _adm(ratio, weight):
    return {**TABLE_CONFIGURATIONS["adm-grid"][1], "lam": ratio * AUTHORS["gamma"], "gamma": AUTHORS["gamma"],
            "proximal_weight": weight}


def _finetune_name(kind, lr):
    return f"{kind}-{lr:g}"


def tune(base: TrainConfig, folder: Path, plan: RegimePlan, *, progress: bool, train: bool) -> dict[str, Any]:
    """The tuning on the held-back fifth of train: the fine-tuning optimizer and lr, then ADM grid's
    ratio (at the authors' proximal weight), then the other proximal weights at the best ratio, and GD
    grid's lam. Returns {"finetune", "adm", "gd" (each the chosen settings, or None while their runs have
    not finished), "adm_result", "gd_result" (the chosen runs), "rows" (every run with its holdout mIoU),
    "pce" (the reference run)}."""
    fit = dataclasses.replace(_fit(base), epochs=plan.tuning_epochs)
    authors = _adm(AUTHORS["lam"] / AUTHORS["gamma"], AUTHORS["proximal_weight"])
    stage = {f"adm-grid-{_finetune_name(kind, lr)}-r{authors['lam']:g}-p{authors['proximal_weight']:g}":
             {**authors, "finetune_optimizer": kind, "finetune_lr": lr} for kind, lr in plan.finetune}
    results = run_group(fit, folder, stage, progress=progress, train=train)
    rows = [_row("finetune", name, settings, results[name]) for name, settings in stage.items()]
    chosen: dict[str, Any] = {"finetune": None, "adm": None, "gd": None, "pce": None, "adm_result": None,
                              "gd_result": None}
    if any(results[name]["status"] == "not run" for name in stage):
        return {**chosen, "rows": rows}
    best = max(stage, key=lambda name: _score(results[name]))
    finetune = {"finetune_optimizer": stage[best]["finetune_optimizer"], "finetune_lr": stage[best]["finetune_lr"]}
    suffix = _finetune_name(finetune["finetune_optimizer"], finetune["finetune_lr"])

    restricted = {"restrict_labels": True} if plan.restrict_labels else {}

    def adm_runs(pairs):
        return {f"adm-grid-{suffix}-r{ratio:g}-p{weight:g}{'-restricted' * plan.restrict_labels}":
                {**_adm(ratio, weight), **finetune, **restricted} for ratio, weight in pairs}

    adm = adm_runs((ratio, AUTHORS["proximal_weight"]) for ratio in plan.ratios)  # the ratio at the authors' weight
    gd = {f"gd-grid-{suffix}-lam{lam:g}": {**TABLE_CONFIGURATIONS["gd-grid"][1], "lam": lam, **finetune}
          for lam in plan.gd_lams}
    reference = {f"pce-{suffix}": {**TABLE_CONFIGURATIONS["pce"][1], **finetune}}
    results.update(run_group(fit, folder, {**adm, **gd, **reference}, progress=progress, train=train))
    chosen["finetune"] = finetune
    chosen["pce"] = results[next(iter(reference))]
    if all(results[name]["status"] != "not run" for name in adm):  # then the other weights at the best ratio
        ratio = adm[max(adm, key=lambda name: _score(results[name]))]["lam"] / AUTHORS["gamma"]
        weights = adm_runs((ratio, weight) for weight in plan.proximal_weights if weight != AUTHORS["proximal_weight"])
        results.update(run_group(fit, folder, weights, progress=progress, train=train))
        adm.update(weights)
    rows += [_row(part, name, settings, results[name])  # (the stage-1 winner stands in its row above)
             for part, runs in (("adm", adm), ("gd", gd), ("pce", reference)) for name, settings in runs.items()
             if name not in stage]
    for part, runs in (("adm", adm), ("gd", gd)):
        if all(results[name]["status"] != "not run" for name in runs) and \
                (part == "gd" or len(runs) == len(plan.ratios) + len(plan.proximal_weights) - 1):
            best_run = max(runs, key=lambda name: _score(results[name]))
            chosen[part], chosen[f"{part}_result"] = runs[best_run], results[best_run]
    for row in rows:
        row["chosen"] = ", ".join(part for part, chose in (("fine-tuning", row["run"] == best),
                                                           ("ADM grid", row["settings"] == chosen["adm"]),
                                                           ("GD grid", row["settings"] == chosen["gd"])) if chose)
    return {**chosen, "rows": rows}


def _row(part, name, settings, result):
    return {"part": part, "run": name, "settings": settings, "miou": _score(result), "status": result["status"],
            "chosen": "", "result": result}


def study(base: TrainConfig, out: str | os.PathLike[str], plan: RegimePlan | None = None, *,
          progress: bool = True, train: bool = True) -> dict[str, Any]:
    """Run (or continue, or with ``train=False`` only read) the regime study of ``base.data`` under `out`.

    `base` gives the data, network, crops, batch and the pCE phase's optimizer and schedule; the
    regime's settings (:data:`AUTHORS`, the tuned values) and the plan's lengths replace its own. The
    groups run in this order: tuning, the first seed's main table, the ablation, the other seeds, the
    dense CRF's runs (last seed).
    Returns everything the report shows (:func:`section`): "kind", "base", "plan", "out", "tuning",
    "tables" (per seed), "ablation" (a difference that would not change the chosen run is not run), "regime"
    (the TrainConfig the tuning's settings are applied to), "seconds".
    """
    plan = RegimePlan() if plan is None else plan
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base: expected a TrainConfig, got {describe(base)}")
    check_data(base.data)
    out = Path(out)
    if not train:
        return _study(base, out, plan, progress=progress, train=train)
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out, "out"):  # one process writes a study
        write_text(out / REGIME_FILE, json.dumps({"base": dataclasses.asdict(base),
                                                  "plan": dataclasses.asdict(plan)}, indent=1) + "\n")
        return _study(base, out, plan, progress=progress, train=train)


def _study(base, out, plan, *, progress, train):
    began = time.perf_counter()
    regime = dataclasses.replace(base, pretrain_epochs=plan.pretrain_epochs, dropout=AUTHORS["dropout"],
                                 latent_init=AUTHORS["latent_init"], finetune_schedule=AUTHORS["finetune_schedule"],
                                 restrict_labels=False, eval_every=2)  # (restricted from the plan's second stage on)
    result: dict[str, Any] = {"kind": "authors", "base": base, "plan": plan, "out": out, "tables": {},
                              "ablation": {}, "regime": regime}
    result["tuning"] = tuning = tune(regime, out / "tuning", plan, progress=progress, train=train)
    result["seconds"] = time.perf_counter() - began
    if tuning["adm"] is None or tuning["gd"] is None:
        return result
    first, *others = plan.seeds
    main = dataclasses.replace(regime, epochs=plan.epochs, seed=first, **tuning["finetune"])
    configurations = {"pce": TABLE_CONFIGURATIONS["pce"][1], "gd-grid": tuning["gd"], "adm-grid": tuning["adm"]}

    def seeded(runs, seed):
        return {f"{key}-seed{seed}": {**settings, "seed": seed} for key, settings in runs.items()}

    def table(runs, seed, eval_every):
        results = run_group(dataclasses.replace(main, eval_every=eval_every), out / "main", seeded(runs, seed),
                            progress=progress, train=train)
        result["tables"].setdefault(seed, {}).update({key: results[f"{key}-seed{seed}"] for key in runs})

    table(configurations, first, 2)
    ablation = {f"ablation-{name}": {**tuning["adm"], **OURS[name]} for name in plan.ablation
                if not _same_run(regime, tuning["adm"], OURS[name])}
    fit = dataclasses.replace(_fit(regime), epochs=plan.tuning_epochs)  # as tune() fits (the same pCE phase)
    done = run_group(fit, out / "tuning", ablation, progress=progress, train=train)
    result["ablation"] = {name.removeprefix("ablation-"): run for name, run in done.items()}
    for seed in others:
        table(configurations, seed, plan.epochs)
    dense = {key: {**TABLE_CONFIGURATIONS[key][1], "lam": lam, **({"gamma": 1.0} if key.startswith("adm") else {})}
             for key, lam in plan.dense}
    table(dense, plan.seeds[-1], 2)
    result["seconds"] = time.perf_counter() - began
    return result


def _same_run(regime, chosen, difference):
    """Whether taking back `difference` leaves the `chosen` settings' run unchanged (e.g. proximal_weight None,
    that is gamma, where the chosen proximal weight equals gamma): no ablation run, the report says so."""
    def effective(settings):
        config = dataclasses.replace(regime, **settings)
        proximal = config.gamma if config.proximal_weight is None else config.proximal_weight
        return dataclasses.replace(config, proximal_weight=float(proximal))

    return effective(chosen) == effective({**chosen, **difference})


def load(folder: str | os.PathLike[str]) -> tuple[TrainConfig, RegimePlan]:
    """The base configuration and plan a regime study folder was run with (its ``regime.json``)."""
    return load_description(Path(folder) / REGIME_FILE, RegimePlan)


# --------------------------------------------------------------------------- the report


def section(result: dict[str, Any], report: Path, figures: Path) -> list[str]:
    """The report's section of a regime study: its answers, the pCE phase's curve, the tuning, the main
    table, Table 1 (each optimizer at its own lam, and at the same lam), the latent step per epoch and the
    ablation."""
    from .reproduction import TABLE1, TABLE3, _cell, _diagnosis, _last, _run_rows, _table, _value

    base, plan, tables, tuning = result["base"], result["plan"], result["tables"], result["tuning"]
    dataset = Path(str(base.data)).name
    lines = [f"## {dataset}: ADM in its authors' regime (issue 19)", "",
             f"Data `{base.data}`; runs in `{result['out']}`. The regime (TrainConfig terms, from the authors' public "
             f"code): `{json.dumps(AUTHORS)}`, crop padding out of every loss; ours stay the pCE phase "
             f"({base.network_optimizer} at {base.lr:g}, {base.schedule}) and the scribbles as hard constraints. "
             f"Lengths: pCE {plan.pretrain_epochs} epochs, fine-tuning {plan.tuning_epochs} epochs on the held-back "
             f"fifth for tuning and the ablation, {plan.epochs} in the main table (the first study: 3 and 3), "
             f"sized to the budget of about 10 CPU hours; ADM runs after the first tuning stage expand only on the "
             f"labels of argmax S and the scribbles (`restrict_labels`: the same X as all labels on 80 of 80 "
             f"latent problems of this regime, 2.1x faster; the ratio-80 run of the first stage rerun restricted "
             f"was bit-identical over all its steps, a ratio-16 run made both ways first differed at step 14 of "
             f"144, holdout mIoU 0.6533 restricted against 0.6550: both are in the runs' table).", "",
             "Base settings of every run (before the regime's and the tuned values):", "",
             "```", json.dumps({k: v for k, v in dataclasses.asdict(base).items() if k != "init"}), "```", ""]
    lines += _answers(result)
    curve = [r for r in _read_pretrain(result) if "miou" in r]
    if curve:
        lines += ["### The pCE phase (held-back fifth of train, seed 0)", "",
                  _table(["epoch", "holdout mIoU"], [[r["epoch"], f"{r['miou']:.4f}"] for r in curve]), ""]
    if tuning["rows"]:
        lines += ["### Tuning (held-back fifth of train, one seed; chosen by holdout mIoU, never on val)", "",
                  _table(["part", "run", "settings", "holdout mIoU", "chosen for"],
                         [[row["part"], row["run"], json.dumps({k: v for k, v in row["settings"].items()
                                                                if k not in ("optimizer", "regularizer")}),
                           f"{row['miou']:.4f}" if row["status"] == "finished" else row["status"],
                           row["chosen"]] for row in tuning["rows"]]), ""]
    if tables:
        seeds = list(tables)
        keys = list(dict.fromkeys(key for table in tables.values() for key in table))

        def column(key, metric, digits):
            return _cell([tables[s][key] for s in seeds if key in tables[s]], metric, digits)

        lines += [f"### Main table: val scores, mean ± std over the seeds that ran each ({len(seeds)} seed(s))", "",
                  _table(["configuration", "settings", "mIoU", *(h for _, h in TABLE3)],
                         [[_name(k), json.dumps(_shown(next(t[k] for t in tables.values() if k in t)["config"])),
                           column(k, "miou", 4),
                           *(column(k, m, 4) for m, _ in TABLE3)] for k in keys]), ""]
        pair = [k for k in ("gd-grid", "adm-grid") if k in keys]
        lines += ["### Table 1: grid-CRF loss per pixel (λ = 1 for measuring), each optimizer at its own λ", "",
                  _table(["configuration", *(h for _, h in TABLE1)],
                         [[_name(k), *(column(k, m, 5) for m, _ in TABLE1)] for k in pair]), ""]
        lines += _equal_lam(tuning)
        lines += _diagnosis(tables[seeds[0]])
    if result["ablation"]:
        reference = tuning["adm_result"]
        rows = [["none: the chosen ADM grid of the tuning", "", _value(reference, "miou", 4), "",
                 _value(reference, "train_latent_changed", 4)]]
        for difference in plan.ablation:
            run = result["ablation"].get(difference)
            if run is None and _same_run(result["regime"], tuning["adm"], OURS[difference]):
                rows.append([difference, json.dumps(OURS[difference]), "no difference: the chosen run's own setting",
                             "", ""])
                continue
            change = _last(run, "miou"), _last(reference, "miou")
            rows.append([difference, json.dumps(OURS[difference]), _value(run, "miou", 4),
                         f"{change[0] - change[1]:+.4f}" if None not in change else "-",
                         _value(run, "train_latent_changed", 4)])
        lines += ["### Ablation: from the regime back to the first study, one difference at a time (held-back "
                  f"fifth of train, {plan.tuning_epochs} epochs of fine-tuning as in the tuning, seed 0)", "",
                  _table(["difference taken back", "setting", "holdout mIoU", "minus the regime",
                          "X ≠ argmax S (last epoch, train)"], rows), ""]
    lines += [f"### Runs ({dataset}, authors' regime)", "", _table(["run", "epochs", "wall s", "status"],
                                                                  _run_rows(result)), ""]
    return lines


def _name(key):
    return TABLE_CONFIGURATIONS[key][0] if key in TABLE_CONFIGURATIONS else key


#: The settings the main table shows per configuration.
SHOWN = ("lam", "gamma", "proximal_weight", "finetune_optimizer", "finetune_lr")


def _shown(config):
    values = dataclasses.asdict(config)
    return {name: values[name] for name in SHOWN if values[name] is not None and
            not (config.optimizer != "adm" and name in ("gamma", "proximal_weight"))
            and not (config.regularizer == "none" and name == "lam")}


def _read_pretrain(result):
    from .reproduction import _read

    return _read(Path(result["out"]) / "tuning" / "pretrain")


def _equal_lam(tuning):
    """GD grid and ADM grid tuning runs at the same lam (ADM at gamma 1: its ratio): relaxed loss R(S) and
    the objective pCE + lam R(S) on train."""
    from .reproduction import _last, _objective, _table

    rows = {row["run"]: row for row in tuning["rows"] if row["status"] == "finished"}
    gd = {row["settings"]["lam"]: row for row in rows.values() if row["part"] == "gd"}
    pairs = [(row["settings"]["lam"], gd[row["settings"]["lam"]], row) for row in rows.values()
             if row["part"] == "adm" and row["settings"]["lam"] in gd]
    if not pairs:
        return []
    table = [[f"{lam:g}", f"{adm['settings']['proximal_weight']:g}",
              f"{_last(g['result'], 'grid_crf_loss_train'):.5f} / {_last(adm['result'], 'grid_crf_loss_train'):.5f}",
              f"{_objective(g['result'], lam):.4f} / {_objective(adm['result'], lam):.4f}",
              f"{g['miou']:.4f} / {adm['miou']:.4f}"] for lam, g, adm in pairs]
    return ["### GD grid against ADM grid at the same λ (tuning runs: held-back fifth, one seed)", "",
            _table(["λ", "ADM proximal weight", "R(S) train (GD / ADM)", "pCE + λ·R(S) train (GD / ADM)",
                    "holdout mIoU (GD / ADM)"], table), ""]


def _answers(result):
    """The issue's questions answered from the tables: differences per seed, mean ± std."""
    from .reproduction import TABLE1, _describe_differences, _differences

    tables = result["tables"]
    lines = ["### Answers (computed from the tables below)", ""]
    if not tables:
        return lines + ["The tuning has not finished: nothing to answer yet.", ""]
    seeds = list(tables)

    def runs(key):
        return [tables[s][key] for s in seeds if key in tables[s]]

    def compared(text, a, b, key, digits, relative=False, unit=""):
        values = _differences(a, b, key, relative)
        if values:
            lines.append(f"- {text}: {_describe_differences(values, digits, unit)}.")

    for key, header in (("miou", "val mIoU"), ("trimap_8", "accuracy within 8 px of boundaries")):
        compared(f"{header}, ADM grid minus GD grid", runs("adm-grid"), runs("gd-grid"), key, 4)
        compared(f"{header}, ADM grid minus pCE only", runs("adm-grid"), runs("pce"), key, 4)
        compared(f"{header}, GD grid minus pCE only", runs("gd-grid"), runs("pce"), key, 4)
    for key, header in TABLE1:
        compared(f"Grid-CRF {header}, ADM grid relative to GD grid (own λ each)", runs("adm-grid"), runs("gd-grid"),
                 key, 1, relative=True, unit=" %")
    return lines + [""] if len(lines) > 2 else lines + ["The main table's runs have not finished.", ""]
