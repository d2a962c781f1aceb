"""The reproduction study end to end on the built-in synthetic data (issue 11): the report and its
figures are written, a second call reuses every run, and every number in the report's tables is the
value in the runs' metrics.jsonl."""

import json
import re
import shutil

import pytest

pytest.importorskip("torch")

from admsolve.cli import main  # noqa: E402
from admsolve.training import TrainConfig  # noqa: E402
from admsolve.training.reproduction import (DIVERGED, GAMMA_GROWTH, Plan, check_data, reproduce,  # noqa: E402
                                            variants, write_report)

BUDGET = dict(data="synthetic", pretrain_epochs=1, epochs=1, batch_size=8, crop_size=48, workers=1)


def tiny_plan(**changes):
    return Plan(**{**dict(seeds=(0,), configurations=("pce", "adm-grid"), lam_grid=(4.0,), gamma_grid=(),
                          lengths=(), solvers=(), variants={}), **changes})


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_study_writes_its_report_and_reuses_its_runs(tmp_path):
    base, out, report = TrainConfig(**BUDGET), tmp_path / "runs", tmp_path / "docs" / "reproduction.md"
    study = reproduce(base, out, tiny_plan())
    write_report([study], report)
    text = report.read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Hyperparameters", "Diagnosis", "Runs"):
        assert title in text, title
    assert (report.with_suffix("") / "fig3-synthetic.png").is_file()
    assert (report.with_suffix("") / "fig5-synthetic.jpg").is_file()

    # every number of Table 2 is the last record of its run
    adm = metrics(out / "seed-0" / "adm-grid")[-1]
    pce = metrics(out / "seed-0" / "pce")[-1]
    table2 = text.split("Table 2")[1].split("###")[0]
    assert f"| ADM grid | {adm['miou']:.4f} |" in table2 and f"| pCE only | {pce['miou']:.4f} |" in table2
    table1 = text.split("Table 1")[1].split("###")[0]
    assert f"{adm['grid_crf_energy_val']:.5f}" in table1
    tuning = metrics(out / "tuning" / "adm-grid-lam4")[-1]
    reference = metrics(out / "tuning" / "pce")[-1]  # pCE only on the same split and budget
    hyperparameters = text.split("Hyperparameters")[1].split("###")[0]
    assert f"{tuning['miou']:.4f}" in hyperparameters and f"| pce | {{}} | {reference['miou']:.4f} |" in hyperparameters

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    again = reproduce(base, out, tiny_plan())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == stamps  # nothing retrained
    assert again["tables"][0]["adm-grid"]["records"] == study["tables"][0]["adm-grid"]["records"]


def test_gd_and_adm_are_also_compared_at_the_same_lam(tmp_path):
    study = reproduce(TrainConfig(**BUDGET), tmp_path / "runs", tiny_plan(configurations=("gd-grid", "adm-grid")))
    text = write_report([study], tmp_path / "r.md").read_text()
    gd, adm = (metrics(tmp_path / "runs" / "tuning" / f"{key}-lam4")[-1] for key in ("gd-grid", "adm-grid"))
    row = text.split("at the same λ")[1].split("###")[0].split("\n| 4 |")[1].split("\n")[0]
    assert f"{gd['grid_crf_loss_train']:.4f} / {adm['grid_crf_loss_train']:.4f}" in row
    objectives = [r["train_pce"] + 4 * r["grid_crf_loss_train"] for r in (gd, adm)]
    assert f"{objectives[0]:.4f} / {objectives[1]:.4f}" in row
    answer = f"pCE + λ·R(S) on train λ 4 {100 * (objectives[1] / objectives[0] - 1):+.1f} %"
    assert answer in text.split("Answers")[1]


def test_lengths_and_solvers_parts(tmp_path):
    plan = tiny_plan(configurations=("adm-grid",), lengths=(1.0, 0.0),
                     solvers=("numba-expansion", "numba-icm", "relaxed-gd"), tune=False, seeds=(0,))
    study = reproduce(TrainConfig(**BUDGET), tmp_path / "runs", plan)
    report = write_report([study], tmp_path / "r.md")
    text = report.read_text()
    icm = metrics(tmp_path / "runs" / "seed-0" / "adm-grid-numba-icm")[-1]  # in the first seed's group
    solvers = text.split("latent solver")[1]
    assert f"| numba-icm | 5 | {icm['train_latent_start_energy']:.5f} | {icm['train_latent_energy']:.5f} |" in solvers
    # relaxed GD gets the tens of steps it needs (the moves keep the base's 5 sweeps)
    relaxed = json.loads((tmp_path / "runs" / "seed-0" / "adm-grid-relaxed-gd" / "config.json").read_text())
    assert (relaxed["max_iter"], relaxed["backend"]) == (50, "relaxed-gd")
    assert "| relaxed-gd | 50 |" in solvers
    # the default solver's run and the generated full-length scribbles are the first seed's ADM grid run itself
    assert study["solvers"]["numba-expansion"] is study["tables"][0]["adm-grid"]
    assert study["lengths"][1.0]["adm-grid"] is study["tables"][0]["adm-grid"]
    assert not (tmp_path / "runs" / "length-1").exists() and (tmp_path / "runs" / "length-0").is_dir()
    assert (tmp_path / "r" / "fig6-synthetic.png").is_file()
    assert re.search(r"\| 0 \| \d\.\d{4} / \d\.\d{4} \|", text)


def test_variants_are_scored_on_the_held_back_part_of_train(tmp_path):
    plan = tiny_plan(variants={"gamma-growth": variants(2)["gamma-growth"]}, configurations=("adm-grid",))
    study = reproduce(TrainConfig(**{**BUDGET, "epochs": 2}), tmp_path / "runs", plan)
    grown = tmp_path / "runs" / "tuning" / "adm-grid-gamma-growth"
    assert json.loads((grown / "config.json").read_text())["val_split"] == "train-holdout"
    records = [r for r in metrics(grown) if r["phase"] == "regularized"]
    assert [r["gamma"] for r in records] == [2.0, 8.0]  # the base gamma 2, grown 4x over the 2 epochs
    assert set(study["variants"]) == {"adm-grid-lam4", "adm-grid-gamma-growth"}  # the chosen tuning run is the reference
    text = write_report([study], tmp_path / "r.md").read_text().split("changes to ADM grid")[1]
    assert f"{records[-1]['miou']:.4f}" in text


@pytest.mark.parametrize("epochs", [1, 2, 3, 15])
def test_gamma_grows_by_the_same_factor_over_a_phase_of_any_length(epochs):
    growth = variants(epochs)["gamma-growth"]["gamma_growth"]
    assert growth ** max(epochs - 1, 1) == pytest.approx(GAMMA_GROWTH)


def test_a_plan_without_variants_takes_those_of_its_budget(tmp_path):
    study = reproduce(TrainConfig(**{**BUDGET, "epochs": 3}), tmp_path, Plan(), train=False)
    assert study["plan"].variants == variants(3) and variants(3)["gamma-growth"] == {"gamma_growth": 2.0}


def test_a_report_of_a_study_under_way_trains_nothing(tmp_path):
    base, out = TrainConfig(**BUDGET), tmp_path / "runs"
    study = reproduce(base, out, tiny_plan(), train=False)
    assert not out.exists()
    text = write_report([study], tmp_path / "r.md").read_text()
    assert "| ADM grid | not run |" in text.split("Table 2")[1]


def test_the_list_of_runs_tells_finished_stopped_and_diverged_apart(tmp_path):
    base, out = TrainConfig(**{**BUDGET, "epochs": 2}), tmp_path / "runs"
    reproduce(base, out, tiny_plan())
    stopped = out / "seed-0" / "adm-grid" / "metrics.jsonl"
    stopped.write_text(stopped.read_text().splitlines()[0] + "\n")
    (out / "seed-0" / "pce" / DIVERGED).write_text("diverged at iteration 3\n")
    text = write_report([reproduce(base, out, tiny_plan(), train=False)], tmp_path / "r.md").read_text()
    runs = text.split("### Runs")[1]
    assert "| seed-0/adm-grid | 1 |" in runs and "| stopped after 1 of 2 epochs" in runs
    assert re.search(r"\| seed-0/pce \| 2 \| \d+ \| diverged \|", runs)
    assert re.search(r"\| seed-0/pretrain \| 1 \| \d+ \| finished \|", runs)


def test_a_moved_study_is_reused_and_reported_from_the_command_line(tmp_path):
    base, out = TrainConfig(**BUDGET), tmp_path / "runs"
    reproduce(base, out / "synthetic", tiny_plan())
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)  # e.g. committed, then checked out in another folder
    stamps = {p: p.stat().st_mtime_ns for p in moved.rglob("metrics.jsonl")}
    reproduce(base, moved / "synthetic", tiny_plan())
    assert {p: p.stat().st_mtime_ns for p in moved.rglob("metrics.jsonl")} == stamps
    # a run whose last record is missing resumes from its checkpoint (its init, the old pretrain, is not read)
    run = moved / "synthetic" / "seed-0" / "adm-grid"
    records = metrics(run)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    shutil.rmtree(out)
    reproduce(base, moved / "synthetic", tiny_plan())
    assert metrics(run) == records
    # with no DATA, --report-only reports every study in --out from its study.json, after the preface
    report, preface = tmp_path / "docs" / "r.md", tmp_path / "notes.md"
    preface.write_text("What the tables say.\n")
    assert main(["reproduce", "--report-only", "--out", str(moved), "--report", str(report), "--quiet",
                 "--preface", str(preface)]) == 0
    adm = metrics(moved / "synthetic" / "seed-0" / "adm-grid")[-1]
    pce = metrics(moved / "synthetic" / "seed-0" / "pce")[-1]
    text = report.read_text()
    assert f"| ADM grid | {adm['miou']:.4f} |" in text and "What the tables say." in text
    assert f"ADM grid minus pCE only: {adm['miou'] - pce['miou']:+.4f} (higher in" in text  # the answers


def test_a_folder_without_enough_images_is_refused_in_one_line(tmp_path, capsys):
    root = tmp_path / "tiny"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    from PIL import Image
    import numpy as np

    for i in range(3):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.ones((20, 20), np.uint8)).save(root / "masks" / f"{i}.png")
    (root / "train.txt").write_text("0\n1\n2\n")
    (root / "val.txt").write_text("0\n")
    with pytest.raises(ValueError, match="at least 10 training images"):
        check_data(str(root))
    assert main(["reproduce", str(root), "--out", str(tmp_path / "o"), "--report", str(tmp_path / "r.md")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
