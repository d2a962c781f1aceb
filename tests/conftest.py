"""Shared test set-up: the hypothesis profiles and the location of the real data."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# "ci" (the default): derandomized, so every run tests the same examples; "dev": more, random examples.
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def grabcut_dir():
    """../shared/data/grabcut, or a skip where it is absent."""
    path = DATA / "grabcut"
    if not (path / "list.txt").is_file():
        pytest.skip(f"real data not found at {path} (the GrabCut set lives in ../shared/data)")
    return path


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
