"""The scribble generator: deterministic per seed, inside its regions, never on void."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from admsolve.data.examples import synthetic_scene
from admsolve.data.io import read_label_map
from admsolve.data.scribbles import generate_scribbles


@st.composite
def masks(draw):
    """Blocky random label maps with some void, from a coarse grid upsampled."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    coarse = rng.integers(0, draw(st.integers(1, 4)), (draw(st.integers(1, 5)), draw(st.integers(1, 5))))
    coarse[rng.random(coarse.shape) < 0.2] = 255
    scale = draw(st.integers(1, 6))
    return np.kron(coarse, np.ones((scale, scale), dtype=coarse.dtype))


@given(mask=masks(), length=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 5))
@settings(max_examples=40)
def test_strokes_lie_inside_their_regions_and_every_region_gets_one(mask, length, seed):
    scribbles = generate_scribbles(mask, length=length, seed=seed)
    marked = scribbles != 255
    assert np.array_equal(scribbles[marked], mask[marked])  # inside their own label, never void
    for label in np.unique(mask[mask != 255]):
        regions, count = ndimage.label(mask == label, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            pixels = int(np.count_nonzero(marked & (regions == index)))
            assert pixels >= 1
            if length == 0.0:
                assert pixels == 1  # a click


@given(mask=masks(), seed=st.integers(0, 5))
@settings(max_examples=30)
def test_deterministic_per_seed_and_shorter_is_a_part_of_longer(mask, seed):
    full = generate_scribbles(mask, length=1.0, seed=seed)
    assert np.array_equal(full, generate_scribbles(mask, length=1.0, seed=seed))
    short = generate_scribbles(mask, length=0.5, seed=seed)
    assert np.all((short == 255) | (short == full))
    assert np.count_nonzero(short != 255) <= np.count_nonzero(full != 255)


def test_synthetic_scene_gets_a_stroke_per_region():
    _, _, truth = synthetic_scene()
    scribbles = generate_scribbles(truth, seed=1)
    assert set(np.unique(scribbles)) == {0, 1, 2, 255}
    assert np.count_nonzero(scribbles == 1) > 10  # a stroke, not a click


def test_msrc_masks():
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "msrc21"
    if not (folder / "list.txt").is_file():
        pytest.skip(f"MSRC-21 not found at {folder}")
    for image_id in (folder / "list.txt").read_text().split()[:5]:
        mask = read_label_map(folder / "masks" / f"{image_id}.png", "mask")
        scribbles = generate_scribbles(mask, seed=0)
        marked = scribbles != 255
        assert marked.any() and np.array_equal(scribbles[marked], mask[marked])


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask=np.zeros((0, 3), int)), "mask: expected a non-empty 2-D integer array"),
    (dict(mask=np.zeros((3, 3))), "mask: expected a non-empty 2-D integer array"),
    (dict(mask=np.zeros((3, 3), int), length=1.5), r"length: expected a value in \[0, 1\], got 1.5"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_scribbles(**kwargs)


def test_dtype_follows_the_values():
    assert generate_scribbles(np.array([[0, 255], [1, 1]])).dtype == np.uint8
    wide = generate_scribbles(np.array([[0, 300], [1, 1]]), unlabeled=-1)
    assert wide.dtype == np.int32 and wide[0, 1] == 300
