"""The command line, run in-process through main() and once as a real console script."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import admsolve as adm
from admsolve.cli import main
from admsolve.data.examples import synthetic_scene
from admsolve.data.io import read_image, read_label_map


@pytest.fixture
def scene_files(tmp_path):
    image, scribbles, truth = synthetic_scene(height=60, width=80)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(scribbles).save(tmp_path / "scribbles.png")
    return tmp_path, image, scribbles, truth


@pytest.mark.parametrize("backend", [name for name, ok in adm.available_backends().items() if ok is True])
def test_segment_writes_labels_that_respect_scribbles(scene_files, backend, capsys):
    folder, image, scribbles, truth = scene_files
    out, picture = folder / "labels.png", folder / "overlay.png"
    code = main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", str(out),
                 "--overlay", str(picture), "--backend", backend, "--connectivity", "4"])
    assert code == 0
    labels = read_label_map(out, "labels")
    scribbled = scribbles != 255
    assert np.array_equal(labels[scribbled], scribbles[scribbled])
    assert np.mean(labels == truth) > 0.95
    assert read_image(picture).shape[1] == image.shape[1]
    assert backend in capsys.readouterr().out


@pytest.mark.parametrize("make_args, message", [
    (lambda f: ["segment", str(f / "missing.png"), str(f / "scribbles.png"), "-o", str(f / "o.png")],
     "image: cannot read"),
    (lambda f: ["segment", str(f / "image.png"), str(f / "image.png"), "-o", str(f / "o.png")],
     "scribbles: expected a single-channel"),
    (lambda f: ["segment", str(f / "image.png"), str(f / "small.png"), "-o", str(f / "o.png")],
     r"scribbles: expected the image's size \(60, 80\), got \(10, 10\)"),
    (lambda f: ["segment", str(f / "image.png"), str(f / "blank.png"), "-o", str(f / "o.png")],
     "scribbles: expected at least one scribbled pixel"),
    (lambda f: ["segment", str(f / "image.png"), str(f / "scribbles.png"), "-o", str(f / "o.png"),
                "--lam", "-1"], "lam: expected a value >= 0"),
])
def test_bad_input_prints_one_line_and_exits_2(scene_files, make_args, message, capsys):
    folder = scene_files[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small.png")
    Image.fromarray(np.full((60, 80), 255, np.uint8)).save(folder / "blank.png")
    assert main(make_args(folder)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("admsolve: error: ")
    assert re.search(message, err)


def test_unknown_backend_is_a_usage_error(scene_files):
    folder = scene_files[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", "x.png",
              "--backend", "nope"])
    assert exit_info.value.code == 2


def test_backends_lists_every_backend(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in adm.available_backends():
        assert name in out


def test_demo_prints_a_row_per_available_backend_and_writes_a_sheet(tmp_path, capsys):
    sheet = tmp_path / "demo.png"
    assert main(["demo", "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    for name in adm.available_backends():
        assert name in out
    assert read_image(sheet).shape[2] == 3


def test_console_script_error_has_no_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "admsolve.cli", "segment", str(tmp_path / "a.png"),
                          str(tmp_path / "b.png"), "-o", str(tmp_path / "c.png")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("admsolve: error: image: cannot read")


def test_grabcut_image_is_segmented_accurately(grabcut_dir, tmp_path):
    image_id = "124080"
    image_path = next((grabcut_dir / "images").glob(f"{image_id}.*"))
    out = tmp_path / "labels.png"
    assert main(["segment", str(image_path), str(grabcut_dir / "scribbles_set1" / f"{image_id}.png"),
                 "-o", str(out)]) == 0
    mask = read_label_map(grabcut_dir / "masks" / f"{image_id}.png", "mask")
    labels = read_label_map(out, "labels")
    scored = mask != 255
    assert np.mean(labels[scored] == mask[scored]) > 0.9


# --------------------------------------------------------------------------- train / evaluate / compare

TINY = ["--model", "fcn-small", "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "2", "--crop-size", "32", "--workers", "1",
        "--quiet"]


def test_train_then_evaluate_then_resume_to_more_epochs(data, tmp_path, capsys):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--optimizer", "adm", "--regularizer", "grid", "--backend",
                 "numba-icm", "--out", str(run), *TINY]) == 0
    assert "epoch 2, val mIoU" in capsys.readouterr().out
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"grid_crf_loss_val"' in lines[-1]
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert re.search(r"miou\s+\d\.\d+", capsys.readouterr().out)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_compare_prints_the_table(data, tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["compare", "--data", data, "--configs", "pce,gd-grid", "--out", str(tmp_path / "cmp"), *TINY]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| pCE only \| \d\.\d{4} \|", out) and re.search(r"\| GD grid \| \d\.\d{4} \|", out)


@pytest.mark.parametrize("make_args, message", [
    (lambda d, t: ["train", "--data", str(t / "nowhere"), "--out", str(t / "r")], "nowhere"),
    (lambda d, t: ["train", "--data", d], "--out: expected the run folder"),
    (lambda d, t: ["train", "--resume", str(t), "--lam", "2"], "--resume: a run continues with its stored settings"),
    (lambda d, t: ["train", "--resume", str(t / "nothing")], "no config.json"),
    (lambda d, t: ["train", "--data", d, "--out", str(t / "r"), "--backend", "mean-field"], "needs a backend that solves a GridCRF"),
    (lambda d, t: ["evaluate", str(t)], "not a run folder"),
    (lambda d, t: ["compare", "--data", d, "--configs", "pce,adm-potts", "--out", str(t / "c")], "adm-potts"),
])
def test_training_commands_report_bad_input_in_one_line(data, tmp_path, make_args, message, capsys):
    pytest.importorskip("torch")
    assert main(make_args(data, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("admsolve: error: ") and message in err and err.count("\n") == 1


def test_relaxed_gd_draws_its_progress_on_a_terminal(scene_files, capsys, monkeypatch):
    """On a terminal, segment with relaxed-gd redraws one progress line on stderr every 10 iterations
    (and ends it); elsewhere (a pipe, a log file) it draws nothing."""
    folder, _, _, _ = scene_files
    argv = ["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", str(folder / "l.png"),
            "--backend", "relaxed-gd", "--connectivity", "4", "--max-iter", "25"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert re.findall(r"\rrelaxed-gd: iteration (\d+), relaxed energy ", err) == ["10", "20"]
    assert err.endswith("\n")


def test_progress_line():
    import io

    from admsolve.cli import progress_line

    stream = io.StringIO()
    callback = progress_line(stream, "relaxed-gd", every=2)
    for t in range(1, 6):
        callback(t, 100.0 / t)
    callback.close()
    assert stream.getvalue() == ("\rrelaxed-gd: iteration 2, relaxed energy 50  "
                                 "\rrelaxed-gd: iteration 4, relaxed energy 25  \n")
    quiet = io.StringIO()
    progress_line(quiet, "x").close()
    assert quiet.getvalue() == ""


def test_the_command_line_makes_waiting_openmp_threads_sleep_unless_told_otherwise(monkeypatch, capsys):
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["backends"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert main(["backends"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
