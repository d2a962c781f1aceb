"""Issues 12 and 22 (Reliability): every item gives a correct result or a one-line error. One test (or a
few parametrized cases) per item, named after it; issue 22's (output files whole or untouched after a
failed write, one writer per output folder) are named issue22."""

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import admsolve as adm
from admsolve._files import FolderLocked, append_line, atomic_file, folder_lock, write_text
from admsolve.cli import main
from admsolve.data.examples import synthetic_scene
from admsolve.data.io import read_image, read_label_map

from strategies import grid_problems

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, *fragments):
    """The CLI's stderr is one line "admsolve: error: ..." holding every fragment; returns it."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("admsolve: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def scene(tmp_path):
    image, scribbles, truth = synthetic_scene(height=48, width=64)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(scribbles).save(tmp_path / "scribbles.png")
    return tmp_path, image, scribbles


# ---------------------------------------------------------------------------------------------- item 4

def test_item4_16_bit_images_segment_like_their_8_bit_original(scene, capsys):
    folder, image, _ = scene
    grey = np.asarray(Image.fromarray(image).convert("L"))
    Image.fromarray(grey).save(folder / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")  # full 16-bit range
    assert Image.open(folder / "grey16.png").mode == "I;16"
    assert np.array_equal(read_image(folder / "grey16.png"), read_image(folder / "grey8.png"))
    for name in ("grey8", "grey16"):
        assert main(["segment", str(folder / f"{name}.png"), str(folder / "scribbles.png"),
                     "-o", str(folder / f"{name}-labels.png"), "--backend", "numba-icm"]) == 0
    labels8 = read_label_map(folder / "grey8-labels.png", "labels")
    assert np.array_equal(labels8, read_label_map(folder / "grey16-labels.png", "labels"))
    assert len(np.unique(labels8)) > 1
    for channels in (3, 4):  # 16-bit RGB and RGBA (Pillow cannot write them: a minimal PNG by hand)
        wide = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)[..., :channels]
        (folder / "rgb16.png").write_bytes(png16(wide.astype(np.uint16) * 257))
        assert np.array_equal(read_image(folder / "rgb16.png"), image)


def png16(array):
    """PNG bytes of an (H, W, C) uint16 array, C = 3 (RGB) or 4 (RGBA), 16 bits per channel."""
    import struct
    import zlib

    height, width, channels = array.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------- item 5

def test_item5_label_values_are_checked_before_k_is_derived(scene, capsys):
    folder, _, scribbles = scene
    for value in (300, 60000):
        wide = scribbles.astype(np.uint16)
        wide[5, 7] = value
        Image.fromarray(wide).save(folder / f"scribbles{value}.png")
    args = lambda value: ["segment", str(folder / "image.png"), str(folder / f"scribbles{value}.png"),  # noqa: E731
                          "-o", str(folder / "out.png")]
    assert main(args(300)) == 2
    err = one_line_error(capsys, "scribbles:", "300", "row 5, column 7")
    assert "unlabeled: expected a value outside" not in err
    tracemalloc.start()
    try:
        assert main(args(60000)) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(capsys, "60000")
    assert peak < 20e6  # a K of 60001 would have allocated 48 * 64 * 60001 * 8 bytes = 1.5 GB
    # the API: K is bounded (256) and a value beyond it is named, with no allocation of size K
    image = np.zeros((4, 5, 3), np.uint8)
    seeds = np.full((4, 5), 255)
    seeds[0, 0] = 60000
    with pytest.raises(ValueError, match=r"scribbles: expected values in \[0, 256\) or 255 \(unlabeled\), got \[60000\]"):
        adm.scribble_unary(image, seeds)
    with pytest.raises(ValueError, match="n_labels: expected at most 256 labels, got 300"):
        adm.scribble_unary(image, np.zeros((4, 5), int), n_labels=300)


# ---------------------------------------------------------------------------------------------- item 6

def test_item6_images_over_the_decompression_bomb_limit_are_refused(scene, capsys, monkeypatch):
    folder = scene[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 48 x 64 = 3072 pixels: warning range and beyond
    for limit in (1000, 2000):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        assert main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"),
                     "-o", str(folder / "out.png")]) == 2
        one_line_error(capsys, "image:", str(folder / "image.png"), "MAX_IMAGE_PIXELS")
    assert not (folder / "out.png").exists()


# ---------------------------------------------------------------------------------------------- item 9

@pytest.mark.parametrize("name,fragment", [("labels.jpg", "lossy"), ("labels", "no extension"),
                                           ("folder", "is a folder"), ("labels.gif", "not a lossless")])
def test_item9_label_maps_are_written_losslessly_only(scene, capsys, name, fragment):
    folder = scene[0]
    (folder / "folder").mkdir()
    assert main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", str(folder / name)]) == 2
    one_line_error(capsys, "--output:", fragment, ".png, .tif, .tiff, .npy")
    assert not (folder / "labels.jpg").exists()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_item9_lossless_label_maps_read_back_exactly(scene, capsys, suffix):
    folder, _, scribbles = scene
    out = folder / f"labels{suffix}"
    assert main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", str(out),
                 "--backend", "numba-icm"]) == 0
    labels = read_label_map(out, "labels")
    scribbled = scribbles != 255
    assert np.array_equal(labels[scribbled], scribbles[scribbled])


def test_item9_overlay_without_extension_is_named_before_solving(scene, capsys):
    folder = scene[0]
    assert main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", str(folder / "o.png"),
                 "--overlay", str(folder / "overlay")]) == 2
    err = one_line_error(capsys, "--overlay:", "extension")
    assert "unknown file extension" not in err and not (folder / "o.png").exists()


# ---------------------------------------------------------------------------------------------- item 8

INTERRUPTED_BATCH = """
import signal, sys, time
import numpy as np
import admsolve as adm

if __name__ == "__main__":
    # Ctrl-C raises KeyboardInterrupt here however the test runner was started: a background job of a
    # script (or nohup) starts with SIGINT ignored, and its children inherit that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = np.random.default_rng(0)
    adm.solve(adm.GridCRF(rng.random((8, 8, 3)), np.ones((4, 8, 8))), sys.argv[1])  # compiled or cached
    image = np.kron(rng.integers(0, 256, (30, 30, 3)), np.ones((10, 10, 1))) + rng.normal(0, 20, (300, 300, 3))
    weights = adm.contrast_weights(image, connectivity=8)
    problems = [adm.GridCRF(rng.exponential(1.0, (300, 300, 8)), weights, lam=2.0) for _ in range(8)]
    print("started", flush=True)
    adm.solve_batch(problems, sys.argv[1], workers=2)
    print("finished", flush=True)
"""


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
@pytest.mark.parametrize("backend,wait", [("numba-expansion", 1.0), ("numba-swap", 1.0), ("maxflow", 3.0)])
def test_item8_ctrl_c_cancels_solve_batch_at_once(tmp_path, backend, wait, inherited):
    """8 problems of 300 x 300 x 8 take 19-32 s on 2 idle cores (threads for numba-expansion, processes
    for maxflow); after Ctrl-C the process must be gone within seconds. The child may inherit SIGINT
    ignored (the runner started by nohup or as a script's background job): it sets its own handler."""
    if adm.available_backends()[backend] is not True:
        pytest.skip(f"{backend} unavailable")
    script = tmp_path / "batch.py"
    script.write_text(INTERRUPTED_BATCH)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), backend], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    try:
        assert child.stdout.readline().strip() == "started"
        time.sleep(wait)
        child.send_signal(signal.SIGINT)
        sent = time.perf_counter()
        out, err = child.communicate(timeout=60)
        elapsed = time.perf_counter() - sent
    finally:
        child.kill()
        child.wait()
    assert "finished" not in out and "KeyboardInterrupt" in err, (out, err[-2000:])
    assert elapsed < 8.0, elapsed  # the whole batch takes 19 s or more


# --------------------------------------------------------------------------------------------- item 11

GUARDLESS_SCRIPT = """
import numpy as np
import admsolve as adm

print("script body", flush=True)
rng = np.random.default_rng(0)
problems = [adm.GridCRF(rng.random((12, 12, 3)), np.ones((2, 12, 12)), lam=0.5) for _ in range(3)]
results = adm.solve_batch(problems, backend="maxflow", workers=2)
again = adm.solve_batch(problems, backend="maxflow", workers=2)  # straight to threads, no second warning
print("energies", [round(r.energy, 6) for r in results])
print("again", [round(r.energy, 6) for r in again])
print("expected", [round(adm.solve(p, "maxflow").energy, 6) for p in problems])
"""


def test_item11_solve_batch_without_a_main_guard_falls_back_to_threads(tmp_path):
    if adm.available_backends()["maxflow"] is not True:
        pytest.skip("maxflow unavailable")
    script = tmp_path / "unguarded.py"
    script.write_text(GUARDLESS_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["energies"] == lines["expected"] == lines["again"]
    assert done.stderr.count("could not start") == 1
    assert "BrokenProcessPool" not in done.stderr and "Traceback" not in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr  # the warning says how to fix it
    # the child that imports the script (the forkserver, or a spawned worker) stops at solve_batch
    assert done.stdout.count("energies") == 1 and done.stdout.count("script body") <= 2
    readme = (ROOT / "README.md").read_text()
    assert 'if __name__ == "__main__":' in readme


def test_item11_solve_batch_init_points_to_inits():
    problem = adm.GridCRF(np.zeros((3, 4, 2)), np.ones((2, 3, 4)))
    with pytest.raises(TypeError, match=r"inits=\[\.\.\.\]"):
        adm.solve_batch([problem], "numba-icm", init=np.zeros((3, 4), int))


def test_item11_densecrf_names_the_image_that_arrived():
    with pytest.raises(ValueError, match=r"got array of shape \(4, 5, 4\) and dtype uint8"):
        adm.DenseCRF(np.zeros((4, 5, 2)), np.zeros((4, 5, 4), np.uint8))


# --------------------------------------------------------------------------------------------- item 10

DISCRETE = [name for name in ("maxflow", "numba-expansion", "numba-swap", "numba-icm")
            if adm.available_backends()[name] is True]


def scaled(problem, factor):
    """`problem` with its unaries and lambda multiplied by `factor`."""
    return adm.GridCRF(problem.unary * factor, problem.weights, lam=problem.lam * factor, seeds=problem.seeds,
                       unlabeled=problem.unlabeled)


@settings(max_examples=40)
@given(problem=grid_problems(max_side=7, max_labels=4), exponent=st.floats(-12, 12), jitter=st.integers(0, 2**32 - 1))
def test_item10_any_scale_of_the_energy_gives_the_same_labeling(problem, exponent, jitter):
    """Unaries and lambda times any factor in [1e-12, 1e12]: the same labeling from every discrete backend.

    The strategy's problems hold multiples of 1/4, hence exact ties between labelings; a factor that is
    not a power of two rounds the scaled numbers differently and breaks such a tie one way or the other,
    so those problems are scaled by the power of two nearest the factor (exact: any tolerance relative
    to the energy gives the same moves, an absolute one does not), and by the factor itself once a
    random jitter of the unaries has removed the ties."""
    untied = adm.GridCRF(problem.unary + np.random.default_rng(jitter).uniform(0, 0.01, problem.unary.shape),
                         problem.weights, lam=problem.lam, seeds=problem.seeds, unlabeled=problem.unlabeled)
    cases = [(problem, 2.0 ** round(e * np.log2(10.0))) for e in (exponent, -12, 12)]  # the ends every time
    cases += [(untied, 10.0 ** e) for e in (exponent, -12, 12)]
    for original, factor in cases:
        for backend in DISCRETE:
            reference = adm.solve(original, backend, max_sweeps=50)
            result = adm.solve(scaled(original, factor), backend, max_sweeps=50)
            assert np.array_equal(result.labels, reference.labels), (backend, factor)
            assert result.converged == reference.converged, (backend, factor)
            assert result.energy == pytest.approx(reference.energy * factor, rel=1e-9, abs=1e-300), (backend, factor)


def test_item10_tiny_energies_are_minimised_like_ordinary_ones():
    """Energies of 1e-13 used to stop every backend at the initial labeling (absolute tolerances)."""
    rng = np.random.default_rng(4)
    image = np.kron(rng.integers(0, 256, (4, 5, 3)), np.ones((6, 6, 1)))
    problem = adm.GridCRF(rng.exponential(1.0, (24, 30, 4)), adm.contrast_weights(image), lam=1.5)
    for backend in DISCRETE + ["relaxed-gd"]:
        reference = adm.solve(problem, backend, max_sweeps=300)
        assert not np.array_equal(reference.labels, problem.initial_labels()), backend
        for factor in (1e-13, 1e12):
            result = adm.solve(scaled(problem, factor), backend, max_sweeps=300)
            assert np.array_equal(result.labels, reference.labels), (backend, factor)


def test_item10_overflowing_inputs_are_refused_or_computed_in_range():
    with pytest.raises(ValueError, match="unary: the energy can reach inf"):
        adm.GridCRF(np.full((3, 4, 2), 1.7e308), np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="unary, weights, lam: the energy can reach"):
        adm.GridCRF(np.zeros((3, 4, 2)), np.full((2, 3, 4), 1e307), lam=100.0)
    with pytest.raises(ValueError, match="unary, compat, gaussian_compat: the energy can reach"):
        adm.DenseCRF(np.zeros((3, 4, 2)), np.zeros((3, 4, 3)), compat=1e307)
    with pytest.raises(ValueError, match="gamma"):
        adm.adm_unary(np.full((2, 2, 2), 0.5), gamma=1e308)
    rng = np.random.default_rng(0)
    image = rng.random((10, 12, 3))
    for factor in (1e200, 1e-250):  # the Boykov-Jolly weights do not depend on the image's scale
        np.testing.assert_allclose(adm.contrast_weights(image * factor), adm.contrast_weights(image), rtol=1e-12)
    values, picture = rng.random((10, 12, 2)), rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    huge = adm.bilateral_filter(values * 1e308, picture)
    np.testing.assert_allclose(huge / 1e308, adm.bilateral_filter(values, picture), rtol=1e-12)
    problem = adm.GridCRF(np.zeros((2, 3, 2)), np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="probs: the relaxed energy at these soft labels is not finite"):
        problem.relaxed_energy(np.full((2, 3, 2), 1e200))
    denormal = adm.GridCRF(rng.random((5, 6, 3)) * 1e-310, np.ones((2, 5, 6)) * 1e-310, lam=1.0)
    with pytest.raises(ValueError, match="relaxed-gd: the step size eta .* is not a finite positive number"):
        adm.solve(denormal, "relaxed-gd")


# ------------------------------------------------------------------------------------ items 1, 2, 3, 7

try:  # the training side needs torch and matplotlib (admsolve[train]); the items above do not
    import matplotlib  # noqa: F401
    import torch

    from admsolve.training import TrainConfig, compare, read_metrics, resume, train
    from admsolve.training.checkpoints import write_config
    from admsolve.training.models import build_model
except ImportError as missing:
    torch, needs_training = None, pytest.mark.skip(reason=f"training needs admsolve[train] ({missing})")
else:
    needs_training = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def one_torch_thread():
    """The tiny networks here run 10x faster on one thread on a busy machine (no spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(data, **settings):
    values = dict(data=data, epochs=1, pretrain_epochs=1, batch_size=2, crop_size=32, workers=1, seed=3, model="fcn-small")
    values.update(settings)
    return TrainConfig(**values)


def stored_run(folder, data, **settings):
    """A run folder holding only config.json (no training), for the checkpoint tests."""
    folder.mkdir()
    write_config(folder, tiny(data, **settings))
    return folder


class Payload:
    """Unpickling this creates `marker` (what a malicious checkpoint could do: run any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


@needs_training
def test_item1_a_checkpoint_that_would_run_code_is_refused(data, tmp_path, capsys):
    run = stored_run(tmp_path / "run", data)
    marker = tmp_path / "marker"
    torch.save({"model": Payload(marker), "optimizer": {}, "epoch": 1, "iteration": 2}, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    one_line_error(capsys, str(run / "checkpoint.pt"), "cannot be loaded safely", "could run code")
    assert not marker.exists()
    assert main(["evaluate", str(run), "--quiet"]) == 2
    one_line_error(capsys, "cannot be loaded safely")
    assert main(["train", "--data", data, "--init", str(run / "checkpoint.pt"), "--out", str(tmp_path / "other"),
                 "--quiet"]) == 2
    one_line_error(capsys, "init:", "cannot be loaded safely")
    assert not marker.exists()


@needs_training
def test_item1_checkpoints_load_with_weights_only_and_resume_exactly_with_dropout(data, tmp_path, monkeypatch):
    """The checkpoint holds tensors, numbers and strings only, with the records and the random states:
    a network with dropout continues exactly as if it had not stopped."""
    from admsolve.training import loop

    def with_dropout(name, n_labels, weights=None, dropout=0.0):  # the fcn-small network, then dropout on its logits
        return torch.nn.Sequential(build_model(name, n_labels, weights=weights, dropout=dropout),
                                   torch.nn.Dropout2d(0.3))

    monkeypatch.setattr(loop, "build_model", with_dropout)
    settings = tiny(data, optimizer="gd")
    first = loop.Trainer(settings, tmp_path, progress=False)
    first.records.append(first.train_epoch(1))
    first.epoch = 1
    first.save()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["records"][0]["epoch"] == 1 and state["rng"]["torch"].dtype == torch.uint8
    continued = first.train_epoch(2)["train_loss"]
    torch.manual_seed(1234)  # whatever happened in between
    second = loop.Trainer(settings, tmp_path, progress=False)
    second.restore()
    assert second.train_epoch(2)["train_loss"] == pytest.approx(continued, rel=1e-6)


@needs_training
@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "another network", "not a checkpoint"])
def test_item2_damaged_checkpoints_give_one_line(data, tmp_path, capsys, damage):
    run = stored_run(tmp_path / "run", data)
    path = run / "checkpoint.pt"
    if damage == "another network":
        model = build_model("fcn-small", 5)  # the data has 2 labels
        torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "iteration": 2}, path)
    else:
        torch.save({"model": build_model("fcn-small", 2).state_dict(), "epoch": 1}, path)
        whole = path.read_bytes()
        path.write_bytes({"truncated": whole[:len(whole) // 2], "empty": b"", "random bytes": os.urandom(4096),
                          "not a checkpoint": whole}[damage])
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = one_line_error(capsys, str(path))
    if damage == "another network":
        assert "holds a network of another shape: classifier.weight is (5, 64, 1, 1) there, (2, 64, 1, 1) here" in err
    elif damage == "not a checkpoint":
        assert "not a checkpoint of admsolve train" in err
    else:
        assert "not a readable torch checkpoint" in err


@needs_training
@pytest.mark.parametrize("device,fragment", [("cuda", "finds no CUDA device"), ("tpu", "expected auto, cpu, cuda")])
def test_item2_unusable_devices_give_one_line(data, tmp_path, capsys, device, fragment):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    assert main(["train", "--data", data, "--device", device, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    one_line_error(capsys, "device:", fragment)


@needs_training
def test_item3_metrics_are_never_lost(data, tmp_path):
    run = tmp_path / "run"
    train(tiny(data, optimizer="gd"), run, progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # a kill between the checkpoint's write and metrics.jsonl's: the last record is missing
    (run / "metrics.jsonl").write_text(lines[0] + "\n")
    assert [r["epoch"] for r in resume(run, progress=False)] == [1, 2]
    assert (run / "metrics.jsonl").read_text().splitlines() == lines  # each record once, as written
    # a finished run without its records: read back from the checkpoint
    (run / "metrics.jsonl").unlink()
    assert [r["epoch"] for r in resume(run, progress=False)] == [1, 2]
    assert (run / "metrics.jsonl").read_text().splitlines() == lines
    # a checkpoint from before the records travelled with it, its metrics lost: the last epoch is evaluated again
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["records"], state["rng"]
    torch.save(state, run / "checkpoint.pt")
    (run / "metrics.jsonl").unlink()
    records = resume(run, progress=False)
    assert [r["epoch"] for r in records] == [2] and records[0]["reevaluated"]
    assert records[0]["miou"] == pytest.approx(json.loads(lines[1])["miou"], rel=1e-6)


@needs_training
def test_item3_and_11_compare_reuses_runs_through_any_path_and_lost_metrics(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tiny(data, pretrain_epochs=1, epochs=1)
    rows = compare(base, "cmp", configurations=("pce",), progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("admsolve.training.comparison.train", no_training)
    (tmp_path / "cmp" / "pce" / "metrics.jsonl").unlink()  # lost: read back from the checkpoint
    relative_data = os.path.relpath(data, tmp_path)
    again = compare(tiny(relative_data, pretrain_epochs=1, epochs=1), tmp_path / "cmp", configurations=("pce",),
                    progress=False)
    assert again == rows


@needs_training
def test_item7_adm_divergence_is_reported_like_gd(data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", data, "--optimizer", "adm", "--finetune-lr", "1e30",
                 "--pretrain-epochs", "0", "--epochs", "2", "--batch-size", "2", "--crop-size", "32", "--workers", "1", "--out", str(run),
                 "--quiet"])
    assert code == 2
    err = one_line_error(capsys, "loss is not finite at epoch", "proximal = nan", "diverged-iteration-")
    assert "probs: expected finite values" not in err
    saved = list(run.glob("diverged-iteration-*.pt"))
    assert len(saved) == 1 and str(saved[0]) in err
    assert torch.load(saved[0], weights_only=True)["iteration"] == int(saved[0].stem.rsplit("-", 1)[1]) - 1


# ----------------------------------------------------------------------------------------- issue 22

#: The environment of a child process: this checkout's admsolve, one torch thread (as in this process).
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def file_size_limit(size):
    """A ``preexec_fn``: the child may not grow a file beyond `size` bytes; a write past it fails with
    EFBIG, the OS error of a full disk for that file (SIGXFSZ, which would kill it, is ignored)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


FAILING_WRITES = """
import sys
from pathlib import Path
from admsolve._files import WriteError, append_line, write_text

folder = Path(sys.argv[1])
for write in (lambda: write_text(folder / "whole.txt", "new " * 100), lambda: append_line(folder / "lines.jsonl", "x" * 60 + "\\n")):
    try:
        write()
    except WriteError as exc:
        print(exc)
"""


def test_issue22_a_write_the_os_refuses_leaves_the_file_as_it_was(tmp_path):
    """Real OS failures (files limited to 120 bytes): the replacement of a whole file, and an append of
    which the OS takes a part (30 bytes) before refusing the rest, leave each file as it was."""
    (tmp_path / "whole.txt").write_text("old\n")
    (tmp_path / "lines.jsonl").write_text('{"a": 1}\n' * 10)  # 90 bytes
    before = {name: (tmp_path / name).read_bytes() for name in ("whole.txt", "lines.jsonl")}
    script = tmp_path / "writes.py"
    script.write_text(FAILING_WRITES)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=CHILD_ENV, preexec_fn=file_size_limit(120))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"cannot write {str(tmp_path / name)!r}: File too large (EFBIG)"
                                        for name in ("whole.txt", "lines.jsonl")]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lines.jsonl", "whole.txt", "writes.py"]
    append_line(tmp_path / "lines.jsonl", '{"a": 2}\n')  # where there is room, the line is added whole
    assert [json.loads(line)["a"] for line in (tmp_path / "lines.jsonl").read_text().splitlines()] == [1] * 10 + [2]


def test_issue22_an_error_inside_an_atomic_write_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "labels.npy"
    write_text(path, "old")
    with pytest.raises(ZeroDivisionError):  # not an OS error: re-raised as it is
        with atomic_file(path) as stream:
            stream.write(b"new")
            1 / 0
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["labels.npy"]


def test_issue22_two_writers_of_one_file_each_replace_it_whole(tmp_path):
    """evaluate redraws predictions.png in a run folder that its training process may be writing too."""
    path = tmp_path / "predictions.png"
    with atomic_file(path) as first:
        first.write(b"first, ")
        write_text(path, "second")  # the other writer, meanwhile
        first.write(b"whole")
        assert path.read_text() == "second"
    assert path.read_bytes() == b"first, whole" and [p.name for p in tmp_path.iterdir()] == ["predictions.png"]


HOLDER = """
import sys
from admsolve._files import folder_lock

with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
"""

PROBE = """
import sys
from admsolve._files import FolderLocked, folder_lock

try:
    with folder_lock(sys.argv[1]):
        print("taken")
except FolderLocked as exc:
    print(exc)
"""


@pytest.fixture
def holder(tmp_path):
    """hold(folder): a child process holding the lock of `folder` (killed at the end of the test)."""
    (tmp_path / "holder.py").write_text(HOLDER)
    children = []

    def hold(folder):
        child = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(folder)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
        children.append(child)
        assert child.stdout.readline().strip() == "locked"
        return child

    yield hold
    for child in children:
        child.kill()
        child.wait()


def probe(folder):
    """What another process gets when it asks for the lock of `folder`: "taken" or the refusal."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True, timeout=120,
                          env=CHILD_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_issue22_a_folder_lock_refuses_other_processes_until_its_holder_dies(tmp_path, holder):
    folder = tmp_path / "out"
    folder.mkdir()
    child = holder(folder)
    refusal = (rf"^out: {re.escape(repr(str(folder)))} is being written by another process \(pid {child.pid}\); "
               r"wait until it ends, or write to another folder$")
    with pytest.raises(FolderLocked, match=refusal):
        with folder_lock(folder):
            pass
    child.kill()  # SIGKILL: nothing of the holder's runs, the OS ends its lock
    child.wait()
    with folder_lock(folder):
        with folder_lock(folder):  # the same process enters again (a command writing inside another's folder)
            pass
        assert probe(folder) == (f"out: {str(folder)!r} is being written by another process (pid {os.getpid()}); "
                                 "wait until it ends, or write to another folder")  # still held: the outer block runs
    assert probe(folder) == "taken"


def untimed(records):
    """Records without their wall times (which differ between two runs of the same computation)."""
    return [{key: value for key, value in record.items() if not key.endswith("_time")} for record in records]


TINY_FLAGS = ["--optimizer", "gd", "--epochs", "1", "--pretrain-epochs", "1", "--batch-size", "2", "--crop-size", "32",
              "--workers", "1", "--seed", "3", "--model", "fcn-small", "--quiet"]


@needs_training
def test_issue22_a_second_writer_of_a_run_in_training_is_refused(data, tmp_path, monkeypatch):
    """While `train --out RUN` trains (here: at its second epoch, the first one's checkpoint written),
    `train --resume RUN --epochs 6` and `train --out RUN` in other processes exit 2 with one line naming
    the folder and the holder's pid, and the run's records are an undisturbed run's."""
    from admsolve.training import loop

    settings = tiny(data, optimizer="gd")
    undisturbed = train(settings, tmp_path / "undisturbed", progress=False)
    run = tmp_path / "run"
    intruders = []
    train_epoch = loop.Trainer.train_epoch

    def with_intruders(self, epoch):
        if epoch == 2:
            for args in (["--resume", str(run), "--epochs", "6", "--quiet"], ["--data", data, "--out", str(run)] + TINY_FLAGS):
                intruders.append(subprocess.run([sys.executable, "-m", "admsolve", "train", *args], capture_output=True,
                                                text=True, timeout=300, env=CHILD_ENV))
        return train_epoch(self, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", with_intruders)
    records = train(settings, run, progress=False)
    assert len(intruders) == 2
    for done in intruders:
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert f"{str(run)!r} is being written by another process (pid {os.getpid()})" in done.stderr
    assert untimed(records) == untimed(undisturbed) and read_metrics(run) == records
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


@needs_training
def test_issue22_locked_folders_refuse_writers_and_serve_readers(data, tmp_path, capsys, holder):
    """train, train --resume, compare and reproduce are refused on a locked folder; evaluate and
    reproduce --report-only read it."""
    run = tmp_path / "run"
    train(tiny(data, optimizer="gd"), run, progress=False)
    child = holder(run)
    for args in (["train", "--resume", str(run), "--epochs", "2", "--quiet"], ["train", "--data", data, "--out", str(run)]
                 + TINY_FLAGS):
        assert main(args) == 2
        one_line_error(capsys, f"run: {str(run)!r}" if "--resume" in args else f"out: {str(run)!r}",
                       f"is being written by another process (pid {child.pid})")
    assert main(["evaluate", str(run), "--quiet"]) == 0
    comparison = tmp_path / "comparison"
    comparison.mkdir()
    child = holder(comparison)
    assert main(["compare", "--data", data, "--out", str(comparison), "--configs", "pce"] + TINY_FLAGS) == 2
    one_line_error(capsys, f"out: {str(comparison)!r}", f"(pid {child.pid})")
    assert not (comparison / "pretrain").exists()
    study = tmp_path / "studies" / "synthetic"
    study.mkdir(parents=True)
    child = holder(study)
    reproduce = ["reproduce", "synthetic", "--out", str(tmp_path / "studies"), "--report", str(tmp_path / "r.md"),
                 "--quiet"]
    assert main(reproduce) == 2
    one_line_error(capsys, f"out: {str(study)!r}", f"(pid {child.pid})")
    capsys.readouterr()
    assert main(reproduce + ["--report-only"]) == 0
    assert "| ADM grid | not run |" in (tmp_path / "r.md").read_text()


def failing_replace(name, fail_when):
    """os.replace, but renaming onto a file called `name` raises ENOSPC when ``fail_when(target)``."""
    replace = os.replace

    def replace_or_fail(source, target):
        if Path(target).name == name and fail_when(Path(target)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(source, target)

    return replace_or_fail


@needs_training
def test_issue22_a_failed_checkpoint_write_keeps_the_last_good_one(data, tmp_path, capsys, monkeypatch):
    """No space for the second epoch's checkpoint: one line, exit 2; the first epoch's checkpoint loads and
    metrics.jsonl holds its records; --resume then gives an undisturbed run's records."""
    run = tmp_path / "run"
    monkeypatch.setattr(os, "replace", failing_replace("checkpoint.pt", Path.is_file))  # the first one is written
    assert main(["train", "--data", data, "--out", str(run)] + TINY_FLAGS) == 2
    one_line_error(capsys, f"cannot write {str(run / 'checkpoint.pt')!r}: No space left on device (ENOSPC)")
    monkeypatch.undo()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and read_metrics(run) == state["records"] and len(state["records"]) == 1
    assert not list(run.glob("*.tmp"))
    undisturbed = train(tiny(data, optimizer="gd"), tmp_path / "undisturbed", progress=False)
    assert untimed(resume(run, progress=False)) == untimed(undisturbed)


@needs_training
def test_issue22_a_full_disk_while_writing_a_checkpoint_gives_one_line(data, tmp_path):
    """The issue's 1 MB file system: files of the run limited to 1 MB (the checkpoint is 2.5 MB)."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "admsolve", "train", "--data", data, "--out", str(run)] + TINY_FLAGS,
                          capture_output=True, text=True, timeout=600, env=CHILD_ENV, preexec_fn=file_size_limit(2**20))
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (f"admsolve: error: cannot write {str(run / 'checkpoint.pt')!r}: "
                                            "File too large (EFBIG)"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (run / "checkpoint.pt").exists() and not list(run.glob("*.tmp"))


@needs_training
def test_issue22_a_run_folder_that_vanishes_gives_one_line(data, tmp_path, capsys, monkeypatch):
    import shutil

    from admsolve.training import loop

    run = tmp_path / "run"
    train_epoch = loop.Trainer.train_epoch

    def vanishing(self, epoch):
        if epoch == 2:
            shutil.rmtree(run)
        return train_epoch(self, epoch)

    monkeypatch.setattr(loop.Trainer, "train_epoch", vanishing)
    assert main(["train", "--data", data, "--out", str(run)] + TINY_FLAGS) == 2
    one_line_error(capsys, f"cannot write {str(run / 'steps.jsonl')!r}: No such file or directory (ENOENT)")
    assert not run.exists()


@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_issue22_a_failed_label_map_write_leaves_the_old_file(scene, capsys, monkeypatch, suffix):
    folder = scene[0]
    out = folder / f"labels{suffix}"
    out.write_bytes(b"the previous result")
    monkeypatch.setattr(os, "replace", failing_replace(out.name, lambda target: True))
    assert main(["segment", str(folder / "image.png"), str(folder / "scribbles.png"), "-o", str(out),
                 "--backend", "numba-icm"]) == 2
    one_line_error(capsys, f"cannot write {str(out)!r}: No space left on device (ENOSPC)")
    assert out.read_bytes() == b"the previous result" and not list(folder.glob("*.tmp"))


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, capsys):
    from admsolve.cli import main

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--data", str(tmp_path / "no-such-data")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not run.exists()
    existing = tmp_path / "mine"
    (existing / "notes").mkdir(parents=True)  # a folder the user made is kept, whatever fails
    assert main(["train", "--out", str(existing), "--data", str(tmp_path / "no-such-data")]) == 2
    assert (existing / "notes").is_dir()
