"""Tests of admsolve.filters.array_lattice.ArrayLattice, the array-module (NumPy / CuPy) permutohedral lattice:
agreement with the Numba PermutohedralLattice, linearity, and (on a GPU) CuPy against NumPy.

On NumPy the two lattices agree bit for bit on every case below (measured max |difference| = 0,
same lattice point count); the tolerance asserted is rtol 1e-10 relative to the largest entry."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import admsolve.filters.array_lattice as lattice_xp
from admsolve.filters.lattice import NORMALIZATIONS, PermutohedralLattice, bilateral_features, gaussian_features
from admsolve.filters.array_lattice import ArrayLattice

RTOL = 1e-10
SIZES = [(1, 1), (1, 6), (5, 3), (9, 13)]


def assert_close(actual, expected):
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * scale)


def random_image(shape, seed):
    return (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)


def feature_cases():
    for i, shape in enumerate(SIZES):
        yield f"bilateral-{shape}", bilateral_features(random_image(shape, i), sxy=3, srgb=13)
        yield f"bilateral80-{shape}", bilateral_features(random_image(shape, 10 + i), sxy=80, srgb=13)
        yield f"gaussian-{shape}", gaussian_features(shape, sxy=1.5)


CASES = list(feature_cases())


@pytest.mark.parametrize("name,features", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("channels", [None, 1, 4])
def test_matches_numba_lattice(name, features, channels):
    rng = np.random.default_rng(len(name) + (channels or 0))
    n = features.shape[0]
    values = rng.normal(size=n if channels is None else (n, channels))
    reference = PermutohedralLattice(features)
    lattice = ArrayLattice(features)
    assert lattice.n_lattice_points == reference.n_lattice_points
    assert_close(lattice.ones_response, reference.ones_response)
    for normalization in NORMALIZATIONS:
        for transpose in (False, True):
            expected = reference.filter(values, normalization=normalization, transpose=transpose)
            actual = lattice.filter(values, normalization=normalization, transpose=transpose)
            assert actual.shape == expected.shape
            assert_close(actual, expected)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50), d=st.integers(1, 6),
       spread=st.sampled_from([0.3, 1.0, 4.0]), normalization=st.sampled_from(NORMALIZATIONS),
       transpose=st.booleans())
def test_matches_numba_lattice_random_features(seed, n, d, spread, normalization, transpose):
    rng = np.random.default_rng(seed)
    features = rng.normal(scale=spread, size=(n, d))
    values = rng.normal(size=(n, 2))
    expected = PermutohedralLattice(features).filter(values, normalization=normalization, transpose=transpose)
    actual = ArrayLattice(features).filter(values, normalization=normalization, transpose=transpose)
    assert_close(actual, expected)


def test_dense_rank_codes_match(monkeypatch):
    """The fallback key codes (dense ranks, for key ranges too wide for one int64) give the same
    lattice as the mixed-radix codes."""
    features = bilateral_features(random_image((7, 9), 3), sxy=2, srgb=10)
    values = np.random.default_rng(1).normal(size=(63, 3))
    reference = PermutohedralLattice(features)
    monkeypatch.setattr(lattice_xp, "_MAX_CODE", 1)
    lattice = ArrayLattice(features)
    assert lattice.n_lattice_points == reference.n_lattice_points
    for transpose in (False, True):
        assert_close(lattice.filter(values, normalization="none", transpose=transpose),
                     reference.filter(values, normalization="none", transpose=transpose))


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), d=st.integers(1, 5),
       a=st.floats(-10, 10), b=st.floats(-10, 10), normalization=st.sampled_from(NORMALIZATIONS))
def test_linear(seed, n, d, a, b, normalization):
    rng = np.random.default_rng(seed)
    lattice = ArrayLattice(rng.normal(size=(n, d)))
    u, v = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    combined = lattice.filter(a * u + b * v, normalization=normalization)
    separate = a * lattice.filter(u, normalization=normalization) + b * lattice.filter(v, normalization=normalization)
    scale = (abs(a) + abs(b)) * max(float(np.max(np.abs(lattice.filter(u, normalization=normalization)))),
                                    float(np.max(np.abs(lattice.filter(v, normalization=normalization)))), 1e-300)
    np.testing.assert_allclose(combined, separate, rtol=0, atol=1e-12 * scale + 1e-300)


def test_transpose_is_adjoint():
    rng = np.random.default_rng(5)
    lattice = ArrayLattice(bilateral_features(random_image((8, 6), 2), sxy=3, srgb=20))
    u, v = rng.normal(size=(48, 2)), rng.normal(size=(48, 2))
    for normalization in NORMALIZATIONS:
        lhs = np.sum(v * lattice.filter(u, normalization=normalization))
        rhs = np.sum(u * lattice.filter(v, normalization=normalization, transpose=True))
        assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


def test_out_and_checks():
    features = gaussian_features((4, 5), sxy=2)
    lattice = ArrayLattice(features)
    values = np.random.default_rng(0).normal(size=(20, 2))
    out = np.empty((20, 2))
    assert lattice.filter(values, out=out) is out
    assert_close(out, PermutohedralLattice(features).filter(values))
    with pytest.raises(ValueError):
        lattice.filter(values, normalization="bogus")
    with pytest.raises(ValueError):
        lattice.filter(values[:5])
    with pytest.raises(ValueError):
        lattice.filter(values, out=np.empty((20, 3)))
    with pytest.raises(ValueError):
        lattice.filter(np.full((20, 1), np.nan))
    with pytest.raises(TypeError):
        lattice.filter(values, transpose=1)
    with pytest.raises(ValueError):
        ArrayLattice(np.array([[np.inf, 0.0]]))


@pytest.mark.gpu
def test_cupy_matches_numpy():
    import cupy

    rng = np.random.default_rng(0)
    features = bilateral_features(random_image((33, 47), 4), sxy=5, srgb=13)
    values = rng.normal(size=(features.shape[0], 5))
    reference = ArrayLattice(features)
    lattice = ArrayLattice(cupy.asarray(features))
    assert lattice.xp is cupy
    assert lattice.n_lattice_points == reference.n_lattice_points
    for normalization in NORMALIZATIONS:
        for transpose in (False, True):
            expected = reference.filter(values, normalization=normalization, transpose=transpose)
            actual = lattice.filter(cupy.asarray(values), normalization=normalization, transpose=transpose)
            assert isinstance(actual, cupy.ndarray)
            # the GPU splat sums in any order (atomic adds): float64 rounding only
            assert_close(actual.get(), expected)
