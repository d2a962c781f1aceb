"""The reproduction study end to end on the built-in synthetic data (issue 11): the report and its
figures are written, a second call reuses every run, and every number in the report's tables is the
value in the runs' metrics.jsonl."""

import json
import re

import pytest

pytest.importorskip("torch")

from admsolve.cli import main  # noqa: E402
from admsolve.training import TrainConfig  # noqa: E402
from admsolve.training.reproduction import Plan, check_data, reproduce, write_report  # noqa: E402

BUDGET = dict(data="synthetic", pretrain_epochs=1, epochs=1, batch_size=8, crop_size=48, workers=1)


def tiny_plan(**changes):
    return Plan(**{**dict(seeds=(0,), configurations=("pce", "adm-grid"), lam_grid=(4.0,), gamma_grid=(),
                          lengths=(), solvers=()), **changes})


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
    assert (report.with_suffix("") / "fig5-synthetic.png").is_file()

    # every number of Table 2 is the last record of its run
    adm = metrics(out / "seed-0" / "adm-grid")[-1]
    pce = metrics(out / "seed-0" / "pce")[-1]
    table2 = text.split("Table 2")[1].split("###")[0]
    assert f"| ADM grid | {adm['miou']:.4f} |" in table2 and f"| pCE only | {pce['miou']:.4f} |" in table2
    table1 = text.split("Table 1")[1].split("###")[0]
    assert f"{adm['grid_crf_energy_val']:.5f}" in table1
    tuning = metrics(out / "tuning" / "adm-grid-lam4")[-1]
    assert f"{tuning['miou']:.4f}" in text.split("Hyperparameters")[1]

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")}
    again = reproduce(base, out, tiny_plan())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.jsonl")} == stamps  # nothing retrained
    assert again["tables"][0]["adm-grid"]["records"] == study["tables"][0]["adm-grid"]["records"]


def test_lengths_and_solvers_parts(tmp_path):
    plan = tiny_plan(configurations=("adm-grid",), lengths=(0.0,), solvers=("numba-icm",), tune=False, seeds=(0,))
    study = reproduce(TrainConfig(**BUDGET), tmp_path / "runs", plan)
    report = write_report([study], tmp_path / "r.md")
    text = report.read_text()
    icm = metrics(tmp_path / "runs" / "solvers" / "numba-icm")[-1]
    assert f"{icm['train_latent_energy']:.5f}" in text.split("latent solver")[1]
    assert (tmp_path / "r" / "fig6-synthetic.png").is_file()
    assert re.search(r"\| 0 \| \d\.\d{4} / \d\.\d{4} \|", text)


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
