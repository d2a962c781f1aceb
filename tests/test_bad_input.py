"""Every public function refuses bad input with an exception whose message names the argument and
says what arrived."""

import importlib.util
import re

import numpy as np
import pytest

import admsolve as adm
from admsolve import backends as registry

H, W, K = 2, 3, 2


def unary():
    return np.zeros((H, W, K))


def weights(d=2):
    return np.ones((d, H, W))


def problem(**kwargs):
    return adm.GridCRF(unary(), weights(), **kwargs)


# --------------------------------------------------------------------------- GridCRF: unary

def test_unary_wrong_ndim():
    with pytest.raises(ValueError, match=r"unary: expected a 3-D array, got array of shape \(2, 3\)"):
        adm.GridCRF(np.zeros((H, W)), weights())


def test_unary_nan():
    bad = unary()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"unary: expected finite values, got 1 NaN or infinite"):
        adm.GridCRF(bad, weights())


def test_unary_inf():
    bad = unary()
    bad[1, 2, 0] = -np.inf
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"unary: expected finite values, got 2 NaN or infinite"):
        adm.GridCRF(bad, weights())


def test_unary_no_pixels():
    with pytest.raises(ValueError, match=r"unary: expected a non-empty array, got array of shape \(0, 3, 2\)"):
        adm.GridCRF(np.zeros((0, W, K)), np.ones((2, 0, W)))


def test_unary_no_labels():
    with pytest.raises(ValueError, match=r"unary: expected a non-empty array, got array of shape \(2, 3, 0\)"):
        adm.GridCRF(np.zeros((H, W, 0)), weights())


def test_unary_not_numeric():
    with pytest.raises(TypeError, match=r"unary: expected a real-valued array, got str"):
        adm.GridCRF("unary", weights())


# --------------------------------------------------------------------------- GridCRF: weights

@pytest.mark.parametrize("shape", [(2, 3, 3), (3, H, W), (2, W, H), (H, W)])
def test_weights_wrong_shape(shape):
    if len(shape) == 2:
        match = r"weights: expected a 3-D array, got array of shape \(2, 3\)"
    else:
        match = r"weights: expected shape \(2, 2, 3\) or \(4, 2, 3\).*got array of shape " + \
            r"\(" + ", ".join(map(str, shape)) + r"\)"
    with pytest.raises(ValueError, match=match):
        adm.GridCRF(unary(), np.ones(shape))


def test_weights_negative():
    bad = weights()
    bad[1, 0, 2] = -0.5
    with pytest.raises(ValueError, match=r"weights: expected non-negative values, got minimum -0\.5"):
        adm.GridCRF(unary(), bad)


def test_weights_nan():
    bad = weights(4)
    bad[3, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"weights: expected finite values, got 1 NaN"):
        adm.GridCRF(unary(), bad)


# --------------------------------------------------------------------------- GridCRF: seeds, lam

def test_seeds_wrong_shape():
    with pytest.raises(ValueError, match=r"seeds: expected shape \(2, 3\), got array of shape \(3, 2\)"):
        problem(seeds=np.full((W, H), 255))


@pytest.mark.parametrize("value", [2, 7, -1, 254])
def test_seeds_out_of_range(value):
    seeds = np.full((H, W), 255)
    seeds[1, 1] = value
    with pytest.raises(ValueError, match=rf"seeds: expected values in \[0, 2\) or 255 \(unlabeled\), got \[{value}\]"):
        problem(seeds=seeds)


def test_seeds_float_dtype():
    with pytest.raises(TypeError, match=r"seeds: expected an integer array, got array of shape \(2, 3\) and dtype float64"):
        problem(seeds=np.full((H, W), 255.0))


def test_seeds_bool_dtype():
    with pytest.raises(TypeError, match=r"seeds: expected an integer array, got .*dtype bool"):
        problem(seeds=np.zeros((H, W), bool))


def test_lam_negative():
    with pytest.raises(ValueError, match=r"lam: expected a value >= 0(\.0)?, got -0\.5"):
        problem(lam=-0.5)


def test_lam_nan():
    with pytest.raises(ValueError, match=r"lam: expected a finite number, got nan"):
        problem(lam=float("nan"))


def test_lam_not_a_number():
    with pytest.raises(TypeError, match=r"lam: expected a real number, got str '1'"):
        problem(lam="1")


@pytest.mark.parametrize("value", [0, 1])
def test_unlabeled_inside_label_range(value):
    with pytest.raises(ValueError, match=rf"unlabeled: expected a value outside \[0, 2\), got {value}"):
        problem(unlabeled=value)


# --------------------------------------------------------------------------- labels and init

def test_labels_out_of_range():
    labels = np.zeros((H, W), int)
    labels[0, 2] = 5
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 2\), got \[5\]"):
        problem().energy(labels)


def test_labels_wrong_shape():
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 3\), got array of shape \(2, 2\)"):
        problem().energy(np.zeros((2, 2), int))


def test_labels_float():
    with pytest.raises(TypeError, match=r"labels: expected an integer array, got .*float64"):
        problem().energy(np.zeros((H, W)))


@pytest.mark.parametrize("backend", [name for name, entry in registry.BACKENDS.items() if entry.problem is adm.GridCRF])
@pytest.mark.parametrize("value", [2, -1])
def test_init_out_of_range(backend, value):
    if adm.available_backends()[backend] is not True:
        pytest.skip(str(adm.available_backends()[backend]))
    init = np.zeros((H, W), int)
    init[1, 0] = value
    with pytest.raises(ValueError, match=rf"init: expected values in \[0, 2\), got \[{value}\]"):
        adm.solve(problem(), backend, init=init)


def test_init_wrong_shape():
    with pytest.raises(ValueError, match=r"init: expected shape \(2, 3\), got array of shape \(3, 3\)"):
        adm.solve(problem(), "numba-icm", init=np.zeros((3, 3), int))


def test_relaxed_energy_wrong_shape():
    with pytest.raises(ValueError, match=r"probs: expected shape \(2, 3, 2\), got array of shape \(2, 3, 3\)"):
        problem().relaxed_energy(np.full((H, W, 3), 1 / 3))


# --------------------------------------------------------------------------- contrast_weights

def test_contrast_weights_connectivity_6():
    with pytest.raises(ValueError, match=r"connectivity: expected 4 or 8, got int 6"):
        adm.contrast_weights(np.zeros((3, 3)), connectivity=6)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0, 3), (0, 0)])
def test_contrast_weights_empty_image(shape):
    with pytest.raises(ValueError, match=r"image: expected a non-empty array, got array of shape"):
        adm.contrast_weights(np.zeros(shape))


def test_contrast_weights_image_wrong_ndim():
    with pytest.raises(ValueError, match=r"image: expected a 2 or 3-D array, got array of shape \(3,\)"):
        adm.contrast_weights(np.zeros(3))


@pytest.mark.parametrize("sigma2", [0.0, -1.0, 0])
def test_contrast_weights_sigma2_not_positive(sigma2):
    with pytest.raises(ValueError, match=rf"sigma2: expected a positive number, got {sigma2}"):
        adm.contrast_weights(np.zeros((3, 3)), sigma2=sigma2)


# --------------------------------------------------------------------------- adm_unary

def test_adm_unary_probs_above_one():
    probs = np.full((2, 2, 2), 0.5)
    probs[0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"probs: expected probabilities in \[0, 1\], got values in \[0\.5, 1\.5\]"):
        adm.adm_unary(probs)


def test_adm_unary_probs_negative():
    probs = np.full((2, 2, 2), 0.5)
    probs[1, 1, 1] = -0.25
    with pytest.raises(ValueError, match=r"probs: expected probabilities in \[0, 1\], got values in \[-0\.25, 0\.5\]"):
        adm.adm_unary(probs)


def test_adm_unary_probs_nan():
    probs = np.full((2, 2, 2), 0.5)
    probs[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"probs: expected finite values, got 1 NaN"):
        adm.adm_unary(probs)


def test_adm_unary_gamma_negative():
    with pytest.raises(ValueError, match=r"gamma: expected a value >= 0(\.0)?, got -1"):
        adm.adm_unary(np.full((2, 2, 2), 0.5), gamma=-1.0)


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 2.0])
def test_adm_unary_eps_outside_open_unit_interval(eps):
    with pytest.raises(ValueError, match=rf"eps: expected a value in \(0, 1\), got {eps}"):
        adm.adm_unary(np.full((2, 2, 2), 0.5), eps=eps)


# --------------------------------------------------------------------------- scribble_unary

def test_scribble_unary_without_scribbles():
    with pytest.raises(ValueError, match=r"scribbles: expected at least one scribbled pixel, got only 255"):
        adm.scribble_unary(np.zeros((3, 3), np.uint8), np.full((3, 3), 255))


def test_scribble_label_not_below_n_labels():
    scribbles = np.full((3, 3), 255)
    scribbles[0, 0] = 0
    scribbles[2, 2] = 3
    with pytest.raises(ValueError, match=r"scribbles: expected values in \[0, 2\) or 255 \(unlabeled\), got \[3\]"):
        adm.scribble_unary(np.zeros((3, 3), np.uint8), scribbles, n_labels=2)


def test_scribbles_wrong_shape():
    with pytest.raises(ValueError, match=r"scribbles: expected shape \(3, 3\), got array of shape \(3, 2\)"):
        adm.scribble_unary(np.zeros((3, 3), np.uint8), np.zeros((3, 2), int))


def test_scribble_image_out_of_range():
    with pytest.raises(ValueError, match=r"image: expected uint8 values or floats in \[0, 1\], got values in \[0, 2\]"):
        adm.scribble_unary(np.array([[0.0, 2.0]]), np.array([[0, 1]]))


# --------------------------------------------------------------------------- solve, solve_batch

def test_unknown_backend():
    names = r",\s*".join(map(re.escape, registry.BACKENDS))
    with pytest.raises(ValueError, match=rf"backend: expected one of {names}, got 'graphcut'"):
        adm.solve(problem(), "graphcut")


def test_unknown_backend_in_batch():
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'graphcut'"):
        adm.solve_batch([problem()], "graphcut")


def test_unknown_option():
    with pytest.raises(TypeError, match=r"backend 'numba-icm' does not take option\(s\) tolerance; it takes: max_iter"):
        adm.solve(problem(), "numba-icm", tolerance=1e-3)


@pytest.mark.parametrize("name", ["max_iter", "max_sweeps", "iterations"])
@pytest.mark.parametrize("value, error", [(-1, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_max_iter_invalid(name, value, error):
    with pytest.raises(error, match=rf"{name}: expected .*, got .*{value}"):
        adm.solve(problem(), "numba-icm", **{name: value})


def test_two_iteration_caps_are_refused():
    with pytest.raises(TypeError, match=r"expected one iteration cap .*got max_iter, max_sweeps"):
        adm.solve(problem(), "numba-icm", max_iter=2, max_sweeps=3)


@pytest.mark.parametrize("bad, arrived", [({"unary": np.zeros((2, 2, 2))}, "dict"), (None, "NoneType"),
                                         (np.zeros((2, 2, 2)), r"array of shape \(2, 2, 2\)")])
def test_solve_non_gridcrf_problem(bad, arrived):
    with pytest.raises(TypeError, match=rf"problem: expected a GridCRF, a DenseCRF or another LabelingProblem, got {arrived}"):
        adm.solve(bad)


def test_solve_batch_inits_length_mismatch():
    with pytest.raises(ValueError, match=r"inits: expected 2 entries, one per problem, got 3"):
        adm.solve_batch([problem(), problem()], "numba-icm", inits=[None, None, None])


@pytest.mark.parametrize("workers", [0, -1])
def test_solve_batch_workers_invalid(workers):
    with pytest.raises(ValueError, match=rf"workers: expected a value >= 1, got {workers}"):
        adm.solve_batch([problem()], "numba-icm", workers=workers)


# --------------------------------------------------------------------------- missing libraries

@pytest.fixture
def maxflow_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "maxflow" or name.startswith("maxflow."):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(registry.importlib.util, "find_spec", find_spec)


def test_missing_backend_library_raises_import_error_naming_the_extra(maxflow_missing):
    with pytest.raises(ImportError, match=r"backend 'maxflow' needs the Python module 'maxflow'.*admsolve\[maxflow\]"):
        adm.solve(problem(), "maxflow")
    reason = adm.available_backends()["maxflow"]
    assert isinstance(reason, str) and "admsolve[maxflow]" in reason


def test_missing_backend_library_in_batch(maxflow_missing):
    with pytest.raises(ImportError, match=r"admsolve\[maxflow\]") as info:
        adm.solve_batch([problem(), problem()], "maxflow", workers=1)
    assert info.value.index == 0


def test_default_backend_skips_a_missing_library(maxflow_missing):
    res = adm.solve(problem())
    expected = next(name for name in registry.DEFAULT_PREFERENCE[adm.GridCRF] if name != "maxflow")
    assert res.backend == expected
