"""The training loop (Algorithm 1), its run folder, resume, divergence, and compare."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from admsolve.training import TrainConfig, TrainingDiverged, compare, evaluate_run, read_metrics, resume, train  # noqa: E402
from admsolve.training.loop import Progress, Trainer  # noqa: E402
from admsolve.training.objective import Objective  # noqa: E402


def config(data, **settings):
    values = dict(data=data, epochs=1, pretrain_epochs=1, batch_size=2, crop_size=32, workers=1, seed=3, model="fcn-small")
    values.update(settings)
    return TrainConfig(**values)


def test_the_loop_overfits_one_small_batch(data, tmp_path):
    trainer = Trainer(config(data, pretrain_epochs=40, epochs=0, batch_size=3, lr=3e-3, scale=(1, 1)),
                      tmp_path / "run", progress=False)
    first = trainer.train_epoch(1)["train_loss"]
    for epoch in range(2, 41):
        last = trainer.train_epoch(epoch)["train_loss"]
    assert last < 0.2 * first


@pytest.mark.parametrize("optimizer,regularizer", [("adm", "grid"), ("gd", "grid"), ("gd", "dense"), ("adm", "dense")])
def test_a_run_writes_its_folder_and_metrics(data, tmp_path, optimizer, regularizer):
    run = tmp_path / "run"
    records = train(config(data, optimizer=optimizer, regularizer=regularizer), run, progress=False)
    assert [r["epoch"] for r in records] == [1, 2] and [r["phase"] for r in records] == ["pce", "regularized"]
    assert read_metrics(run) == records
    for key in ("epoch", "miou", "accuracy", "grid_crf_loss_train", "grid_crf_loss_val", "trimap_8", "trimap_16"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert 0 <= records[-1]["miou"] <= 1
    term = {"adm": "train_proximal", "gd": f"train_{regularizer}_crf"}[optimizer]
    assert term in records[1] and term not in records[0]
    assert ("solver_time" in records[1]) == (optimizer == "adm")
    if optimizer == "adm" and regularizer == "grid":  # diagnosis: expansion lowers eq. 8 from argmax S
        assert records[1]["train_latent_energy"] <= records[1]["train_latent_start_energy"] + 1e-12
        assert 0 <= records[1]["train_latent_changed"] <= 1
    for name in ("config.json", "checkpoint.pt", "curves.png", "predictions.png"):
        assert (run / name).is_file(), name
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == \
        config(data, optimizer=optimizer, regularizer=regularizer).resolved()


#: The knobs of the authors' regime (issue 19), which must round-trip through resume too.
REGIME = dict(finetune_optimizer="sgd", finetune_lr=1e-4, finetune_schedule="step", schedule="constant",
              proximal_weight=1.5, latent_init="label-0")


@pytest.mark.parametrize("regime", [{}, REGIME], ids=["defaults", "authors-regime"])
def test_resume_after_a_stop_reproduces_the_next_epoch(data, tmp_path, monkeypatch, regime):
    settings = config(data, optimizer="adm", regularizer="grid", epochs=2, **regime)
    whole = train(settings, tmp_path / "whole", progress=False)

    def stop_after_epoch_2(self, line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "done", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(settings, tmp_path / "stopped", progress=True)
    monkeypatch.undo()
    assert [r["epoch"] for r in read_metrics(tmp_path / "stopped")] == [1, 2]
    resumed = resume(tmp_path / "stopped", progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for key in ("train_loss", "train_proximal", "miou", "grid_crf_loss_val"):
        assert resumed[2][key] == pytest.approx(whole[2][key], rel=1e-6, abs=1e-9), key


def test_a_nan_loss_stops_with_the_step_and_keeps_what_was_written(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    losses = Objective.__call__

    def nan_in_phase_2(self, phase, logits, images, scribbles, valid):
        terms = losses(self, phase, logits, images, scribbles, valid)
        if phase == "regularized":
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Objective, "__call__", nan_in_phase_2)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1 \(iteration 3\).*loss = nan") as caught:
        train(config(data, regularizer="grid", optimizer="gd"), run, progress=False)
    saved = run / "diverged-iteration-3.pt"
    assert str(saved) in str(caught.value) and saved.is_file()
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_a_run_folder_is_not_overwritten(data, tmp_path):
    train(config(data, epochs=0), tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config(data, epochs=0), tmp_path / "run", progress=False)


def test_evaluate_run_matches_the_last_record(data, tmp_path):
    records = train(config(data, optimizer="gd"), tmp_path / "run", progress=False)
    result = evaluate_run(tmp_path / "run", progress=False)
    for key in ("miou", "accuracy", "grid_crf_loss_val"):
        assert result[key] == pytest.approx(records[-1][key], rel=1e-6)


def test_compare_shares_phase_1_and_reuses_finished_runs(data, tmp_path, monkeypatch):
    base = config(data)
    rows = compare(base, tmp_path / "cmp", configurations=("pce", "adm-grid"), progress=False)
    assert [row["name"] for row in rows] == ["pCE only", "ADM grid"]
    for key in ("pce", "adm-grid"):
        stored = json.loads((tmp_path / "cmp" / key / "config.json").read_text())
        assert stored["init"] == str(tmp_path / "cmp" / "pretrain" / "checkpoint.pt")
        assert stored["pretrain_epochs"] == 0
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("\n") == 4
    assert (tmp_path / "cmp" / "comparison.png").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("admsolve.training.comparison.train", no_training)
    monkeypatch.setattr("admsolve.training.comparison.resume", no_training)
    assert compare(base, tmp_path / "cmp", configurations=("pce", "adm-grid"), progress=False) == rows
    with pytest.raises(FileExistsError, match="other settings"):
        compare(config(data, lam=1.0), tmp_path / "cmp", configurations=("adm-grid",), progress=False)
    # gamma is read by ADM alone: the pCE phase and the pCE-only run are reused, ADM is trained anew
    rows = compare(config(data, gamma=3.0), tmp_path / "cmp", configurations=("pce",), progress=False)
    assert rows[0]["settings"]["gamma"] == TrainConfig().gamma != 3.0


@pytest.mark.parametrize("settings,match", [
    (dict(optimizer="sgdx"), "optimizer: expected one of gd, adm"),
    (dict(regularizer="potts"), "regularizer: expected one of none, grid, dense"),
    (dict(backend="mean-field"), "backend: the grid regularizer needs a backend that solves a GridCRF"),
    (dict(backend="maxflow", optimizer="gd"), "backend: a solver is used only with optimizer 'adm'"),
    (dict(epochs=0, pretrain_epochs=0), "epochs: expected at least one epoch"),
    (dict(batch_size=0), "batch_size"),
    (dict(lam=-1.0), "lam"),
    (dict(eval_every=0), "eval_every"),
    (dict(gamma_growth=0.5), "gamma_growth"),
])
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**settings)


def test_unknown_settings_in_a_stored_config_are_named():
    with pytest.raises(ValueError, match=r"unknown settings \['lamda'\]"):
        TrainConfig.from_dict({"lamda": 2})


def test_loader_workers_give_the_same_batches(data):
    from admsolve.training.batches import TrainingBatches
    from admsolve.data import open_dataset

    dataset = open_dataset("synthetic", "train")
    kinds = [TrainingBatches(dataset, batch_size=6, crop_size=(32, 32), scale=(0.75, 1.25), seed=3,
                             device=torch.device("cpu"), workers=workers) for workers in (0, 2)]
    serial, parallel = (list(kind.epoch(2)) for kind in kinds)
    assert len(serial) == len(parallel) == kinds[0].steps_per_epoch
    for (s1, i1, c1, v1), (s2, i2, c2, v2) in zip(serial, parallel):
        assert s1 == s2
        np.testing.assert_array_equal(i1, i2)
        assert torch.equal(c1, c2) and torch.equal(v1, v2)
    images, scribbles, valid = kinds[0].batch(2, kinds[0].order(2)[:6])
    np.testing.assert_array_equal(images, serial[0][1])


def test_each_process_takes_its_share_of_every_batch():
    from admsolve.training.batches import TrainingBatches
    from admsolve.data import open_dataset

    dataset = open_dataset("synthetic", "train")
    whole = TrainingBatches(dataset, batch_size=4, crop_size=(32, 32), scale=(1, 1), seed=0, device=torch.device("cpu"))
    halves = [TrainingBatches(dataset, batch_size=4, crop_size=(32, 32), scale=(1, 1), seed=0,
                              device=torch.device("cpu"), rank=rank, world_size=2) for rank in (0, 1)]
    for shares in zip(whole.shares(1), *(half.shares(1) for half in halves)):
        assert sorted(shares[1] + shares[2]) == sorted(shares[0])
    with pytest.raises(ValueError, match="batch_size: expected a multiple of the world size 3"):
        TrainingBatches(dataset, batch_size=4, crop_size=(32, 32), scale=(1, 1), seed=0,
                        device=torch.device("cpu"), world_size=3)


def test_steps_jsonl_holds_one_line_per_step_also_after_a_resume(data, tmp_path, monkeypatch):
    settings = config(data, optimizer="adm", regularizer="grid", epochs=2)

    def stop_after_epoch_2(self, line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "done", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(settings, tmp_path / "run", progress=True)
    monkeypatch.undo()
    with (tmp_path / "run" / "steps.jsonl").open("a") as stream:  # a step of epoch 3 logged before a kill
        stream.write(json.dumps({"iteration": 10 ** 6, "epoch": 3}) + "\n")
    records = resume(tmp_path / "run", progress=False)
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in steps] == list(range(1, records[-1]["iteration"] + 1))
    assert {"lr", "loss", "pce", "epoch", "step"} <= set(steps[0])
    assert "latent_changed" in steps[-1] and "proximal" in steps[-1]


def test_amp_needs_a_gpu(data, tmp_path):
    with pytest.raises(ValueError, match=r"amp: mixed precision runs on a CUDA GPU \(--device cuda\), got device 'cpu'"):
        train(config(data, amp=True, device="cpu"), tmp_path / "run", progress=False)


def test_config_json_stores_the_values_the_run_used(tmp_path):
    settings = TrainConfig(data="synthetic", regularizer="grid", optimizer="gd", epochs=1, pretrain_epochs=0,
                           batch_size=8, workers=1)
    assert settings.lam is None and settings.crop_size is None and settings.model is None
    train(settings, tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (stored["lam"], stored["crop_size"], stored["model"]) == (4.0, 96, "fcn-small")
    assert resume(tmp_path / "run", progress=False)[-1]["epoch"] == 1  # the resolved form resumes as itself


def test_eval_every_evaluates_every_nth_epoch_and_each_phase_end(data, tmp_path):
    records = train(config(data, pretrain_epochs=2, epochs=3, eval_every=3, regularizer="none"), tmp_path / "run",
                    progress=False)
    assert ["miou" in r for r in records] == [False, True, True, False, True]  # the pCE end 2, 3, the last 5
    assert ["eval_time" in r for r in records] == [False, True, True, False, True]


def test_evaluating_more_often_changes_nothing_in_the_training(data, tmp_path):
    # why compare and reproduce reuse a run whatever its eval_every (the study's later groups evaluate less)
    runs = [train(config(data, optimizer="adm", pretrain_epochs=1, epochs=2, eval_every=every), tmp_path / str(every),
                  progress=False) for every in (1, 3)]
    assert ["miou" in r for r in runs[0]] == [True, True, True] and ["miou" in r for r in runs[1]] == [True, False, True]
    for key in ("train_loss", "train_pce", "train_proximal", "train_latent_energy"):
        assert [r.get(key) for r in runs[0]] == [r.get(key) for r in runs[1]], key
    for key in ("miou", "accuracy", "grid_crf_loss_val", "grid_crf_energy_train"):
        assert runs[0][-1][key] == runs[1][-1][key], key


def _older(values):
    del values["eval_every"], values["gamma_growth"]  # written before they existed


def _unread(values):
    values.update(gamma=7.0, max_iter=1, lam=3.0)  # e.g. the defaults of an older version: pCE reads none of them


def _resources(values):
    values.update(workers=1, loader_workers=2, world_size=2, tensorboard=True, eval_every=9)  # how it ran, not what it learnt


@pytest.mark.parametrize("change", [_older, _unread, _resources])
def test_a_stored_run_is_reused_whatever_it_holds_beyond_the_settings_it_reads(data, tmp_path, change):
    settings = config(data, regularizer="none")
    run = tmp_path / "run"
    compare(settings, run, configurations=("pce",), progress=False)
    for name in ("pretrain", "pce"):
        stored = run / name / "config.json"
        values = json.loads(stored.read_text())
        change(values)
        stored.write_text(json.dumps(values))
    stamps = [(run / name / "metrics.jsonl").stat().st_mtime_ns for name in ("pretrain", "pce")]
    compare(settings, run, configurations=("pce",), progress=False)
    assert [(run / name / "metrics.jsonl").stat().st_mtime_ns for name in ("pretrain", "pce")] == stamps


def test_lam_and_gamma_default_per_data_optimizer_and_regularizer(tmp_path):
    from admsolve.training.config import DEFAULT_WEIGHTS

    for kind, data in (("synthetic", "synthetic"), ("folder", str(tmp_path))):
        for (optimizer, regularizer), (lam, gamma) in DEFAULT_WEIGHTS[kind].items():
            resolved = TrainConfig(data=data, optimizer=optimizer, regularizer=regularizer).resolved()
            assert (resolved.lam, resolved.gamma) == (lam, DEFAULT_WEIGHTS[kind][("adm", regularizer)][1])
            assert resolved.resolved() == resolved  # resolving is idempotent
            given = TrainConfig(data=data, optimizer=optimizer, regularizer=regularizer, lam=0.3, gamma=0.7).resolved()
            assert (given.lam, given.gamma) == (0.3, 0.7)
    assert TrainConfig(regularizer="none").resolved().lam is None  # pCE reads no lam
