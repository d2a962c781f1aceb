"""Issue 12 (Reliability): every item gives a correct result or a one-line error. One test (or a few
parametrized cases) per item, named after it."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import admsolve as adm
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
import sys, time
import numpy as np
import admsolve as adm

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    adm.solve(adm.GridCRF(rng.random((8, 8, 3)), np.ones((4, 8, 8))), sys.argv[1])  # compiled or cached
    image = np.kron(rng.integers(0, 256, (30, 30, 3)), np.ones((10, 10, 1))) + rng.normal(0, 20, (300, 300, 3))
    weights = adm.contrast_weights(image, connectivity=8)
    problems = [adm.GridCRF(rng.exponential(1.0, (300, 300, 8)), weights, lam=2.0) for _ in range(8)]
    print("started", flush=True)
    adm.solve_batch(problems, sys.argv[1], workers=2)
    print("finished", flush=True)
"""


@pytest.mark.parametrize("backend,wait", [("numba-expansion", 1.0), ("maxflow", 3.0)])
def test_item8_ctrl_c_cancels_solve_batch_at_once(tmp_path, backend, wait):
    """8 problems of 300 x 300 x 8 take 19-32 s on 2 idle cores (threads for numba-expansion, processes
    for maxflow); after Ctrl-C the process must be gone within seconds."""
    if adm.available_backends()[backend] is not True:
        pytest.skip(f"{backend} unavailable")
    script = tmp_path / "batch.py"
    script.write_text(INTERRUPTED_BATCH)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), backend], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, cwd=tmp_path)
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
print("energies", [round(r.energy, 6) for r in results])
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
    assert lines["energies"] == lines["expected"]
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
