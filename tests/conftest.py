"""Shared test set-up: the hypothesis profiles and the location of the real data."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from hypothesis import HealthCheck, settings

# "ci" (the default): derandomized, so every run tests the same examples; "dev": more, random examples.
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real_data(name, title):
    """../shared/data/<name>, or a skip where it is absent."""
    path = DATA / name
    if not (path / "list.txt").is_file():
        pytest.skip(f"real data not found at {path} (the {title} set lives in ../shared/data)")
    return path


@pytest.fixture
def grabcut_dir():
    return _real_data("grabcut", "GrabCut")


@pytest.fixture
def msrc_dir():
    return _real_data("msrc21", "MSRC-21")


def cuda_available():
    """Why GPU tests cannot run here, or None when CuPy and a CUDA device are present."""
    try:
        import cupy

        return None if cupy.cuda.runtime.getDeviceCount() > 0 else "no CUDA device"
    except Exception as exc:  # ImportError, or CUDA driver errors
        return f"CuPy or CUDA unavailable ({type(exc).__name__}: {exc})"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    reason = cuda_available() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))


def write_dataset(root, n_images=5, size=40, seed=0):
    """A tiny folder dataset in the layout of ../shared/data: a bright disk (label 1) on a dark noisy
    background, masks but no scribbles (they are generated); 3 train and 2 val images."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_images):
        cy, cx, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(6, 11))]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        image = np.where(mask[..., None] == 1, [200, 120, 60], [50, 80, 110]) + rng.normal(0, 25, (size, size, 3))
        ids.append(f"img{i}")
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
    (root / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (root / "val.txt").write_text("\n".join(ids[3:]) + "\n")
    (root / "list.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def data(tmp_path):
    """The path of a tiny folder dataset (see write_dataset)."""
    return str(write_dataset(tmp_path / "data"))
