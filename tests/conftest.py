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
