"""The ``relaxed-gd`` backend: exponentiated-gradient descent on the relaxed grid-CRF energy (eq. 9), and
the paper's Fig. 1 point that such a local method stops at a weak edge near its start while the
global optimum (a min-cut) finds the strong edge further away."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import admsolve as adm
from admsolve.backends import relaxed_gd
from admsolve.energies.gridcrf import relaxed_energy_arrays
from strategies import grid_problems, labelings, scale

BACKEND = "relaxed-gd"


def assert_valid_probs(problem, probs):
    assert isinstance(probs, np.ndarray)
    assert probs.shape == problem.unary.shape
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, rtol=0, atol=1e-12)
    seeded = problem.seeded
    onehot = np.eye(problem.n_labels)[np.where(seeded, problem.seeds, 0)]
    assert np.array_equal(probs[seeded], onehot[seeded])


# --------------------------------------------------------------------------- relaxed energy

@pytest.mark.parametrize("method", relaxed_gd.METHODS)
@pytest.mark.parametrize("step", [1.0, 0.25])
@given(data=st.data())
@settings(max_examples=25)
def test_relaxed_energy_never_rises(step, method, data):
    """With eta <= 1 / (lam * max incident weight) mirror descent is monotone; step <= 2 ensures it. The
    accelerated method takes only steps that do not raise R."""
    problem = data.draw(grid_problems(max_side=7))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    res = adm.solve(problem, BACKEND, init=init, step=step, max_sweeps=300, method=method)
    relaxed = res.relaxed_history
    assert len(relaxed) == len(res.history)
    assert all(isinstance(v, float) for v in relaxed)
    for before, after in zip(relaxed, relaxed[1:]):
        assert after <= before + 1e-10 * scale(before, 1.0), relaxed


def test_relaxed_energy_decreases_on_a_fixed_problem():
    rng = np.random.default_rng(3)
    problem = adm.GridCRF(rng.standard_normal((9, 11, 3)), rng.random((4, 9, 11)), lam=1.5)
    res = adm.solve(problem, BACKEND, init=rng.integers(0, 3, (9, 11)))
    relaxed = np.array(res.relaxed_history)
    assert np.all(np.diff(relaxed) <= 1e-12 * np.abs(relaxed[:-1]).max())
    assert relaxed[-1] < relaxed[0] - 1.0  # it does move
    assert res.converged
    # the last value is the relaxed energy of the returned probabilities
    assert math.isclose(relaxed[-1], problem.relaxed_energy(res.probs)[0], rel_tol=1e-12)


def test_relaxed_energy_arrays_matches_the_method():
    rng = np.random.default_rng(4)
    problem = adm.GridCRF(rng.standard_normal((5, 6, 4)), rng.random((4, 5, 6)), lam=0.75)
    probs = rng.dirichlet(np.ones(4), (5, 6))
    value, grad = problem.relaxed_energy(probs)
    value2, grad2 = relaxed_energy_arrays(problem.unary, problem.weights, problem.lam, probs)
    assert value == value2 and np.array_equal(grad, grad2)


def test_default_step_is_scale_free():
    rng = np.random.default_rng(5)
    unary, weights = rng.standard_normal((4, 5, 3)), rng.random((2, 4, 5))
    small = adm.GridCRF(unary, weights, lam=2.0)
    large = adm.GridCRF(1000 * unary, weights, lam=2000.0)
    assert math.isclose(relaxed_gd.default_eta(small), 1000 * relaxed_gd.default_eta(large), rel_tol=1e-12)
    a, b = adm.solve(small, BACKEND), adm.solve(large, BACKEND)
    assert np.array_equal(a.labels, b.labels)
    # lam = 0 and zero unaries: finite step, nothing moves
    flat = adm.GridCRF(np.zeros((3, 3, 2)), np.ones((2, 3, 3)), lam=0.0)
    assert math.isfinite(relaxed_gd.default_eta(flat))
    res = adm.solve(flat, BACKEND)
    assert res.converged and res.sweeps == 1


# --------------------------------------------------------------------------- seeds and history

@pytest.mark.parametrize("method", relaxed_gd.METHODS)
@given(data=st.data())
@settings(max_examples=40)
def test_rounded_result_respects_seeds(method, data):
    problem = data.draw(grid_problems(max_side=8))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    max_sweeps = data.draw(st.sampled_from([None, 1, 5]), label="max_sweeps")
    res = adm.solve(problem, BACKEND, init=init, max_sweeps=max_sweeps, method=method)
    assert not problem.violates_seeds(res.labels)
    assert_valid_probs(problem, res.probs)


@given(data=st.data())
@settings(max_examples=30)
def test_history_semantics(data):
    problem = data.draw(grid_problems(max_side=8))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    start = problem.initial_labels() if init is None else problem.apply_seeds(init)
    res = adm.solve(problem, BACKEND, init=init, max_sweeps=40)
    assert res.labels.dtype == np.int32
    assert res.energy == problem.energy(res.labels)
    assert res.history[0] == problem.energy(start)
    assert res.history[-1] == res.energy
    assert res.sweeps == len(res.history) - 1 == len(res.relaxed_history) - 1
    assert 1 <= res.sweeps <= 40
    # the labels are the argmax of the returned probabilities, seeds applied
    assert np.array_equal(res.labels, problem.apply_seeds(np.argmax(res.probs, axis=2)))
    assert_valid_probs(problem, res.probs)
    # the start mixes init with the uniform distribution: relaxed_history[0] is R of that mix
    k = problem.n_labels
    mix = (1 - relaxed_gd.MIX) * np.eye(k)[start] + relaxed_gd.MIX / k
    mix = np.where(problem.seeded[..., None], np.eye(k)[np.where(problem.seeded, problem.seeds, 0)], mix)
    assert math.isclose(res.relaxed_history[0], problem.relaxed_energy(mix)[0], rel_tol=1e-12,
                        abs_tol=1e-12)


def test_bad_options_are_refused():
    problem = adm.GridCRF(np.zeros((2, 2, 2)), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="device"):
        adm.solve(problem, BACKEND, device="tpu")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="step"):
            adm.solve(problem, BACKEND, step=bad)
    with pytest.raises(ValueError, match="tol"):
        adm.solve(problem, BACKEND, tol=-1e-3)
    with pytest.raises(ValueError, match="method: expected one of"):
        adm.solve(problem, BACKEND, method="nesterov")
    with pytest.raises(ValueError, match="history: expected one of"):
        adm.solve(problem, BACKEND, history="none")
    with pytest.raises(TypeError, match="callback: expected a callable"):
        adm.solve(problem, BACKEND, callback=3)


# --------------------------------------------------------------------------- the accelerated method


@given(data=st.data())
@settings(max_examples=60)
def test_accelerated_is_not_above_the_plain_method_at_equal_iterations(data):
    """Issue 13: after every iteration (both running, tol = 0) the accelerated method's relaxed energy
    is at most the plain method's (up to rounding). Measured over 400 random problems (60 iterations):
    never above. Its own final value is lower than the plain method's converged one on about 3/4 of
    such problems and higher on about 1 in 60 (another local minimum; benchmarks/relaxed_gd.py)."""
    problem = data.draw(grid_problems(max_side=9))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    plain = adm.solve(problem, BACKEND, init=init, method="fixed", max_iter=60, tol=0.0, history="ends")
    fast = adm.solve(problem, BACKEND, init=init, max_iter=60, tol=0.0, history="ends")
    top = max(1.0, max(abs(v) for v in plain.relaxed_history))
    for a, b in zip(fast.relaxed_history, plain.relaxed_history):
        assert a <= b + 1e-9 * top


def test_accelerated_converges_in_far_fewer_iterations():
    """On the 9 x 11 problem below: the plain method needs hundreds of iterations, the accelerated one
    a few tens, and ends lower."""
    rng = np.random.default_rng(3)
    problem = adm.GridCRF(rng.standard_normal((9, 11, 3)), rng.random((4, 9, 11)), lam=1.5)
    init = rng.integers(0, 3, (9, 11))
    plain = adm.solve(problem, BACKEND, init=init, method="fixed", max_iter=20_000)
    fast = adm.solve(problem, BACKEND, init=init)
    assert plain.converged and fast.converged
    assert fast.sweeps <= 60 and plain.sweeps >= 10 * fast.sweeps
    assert fast.relaxed_history[-1] <= plain.relaxed_history[-1] + 1e-9 * abs(plain.relaxed_history[-1])
    reach = next(i for i, v in enumerate(fast.relaxed_history) if v <= plain.relaxed_history[-1])
    assert reach <= 60


def test_the_default_cap_and_the_message():
    rng = np.random.default_rng(6)
    problem = adm.GridCRF(rng.standard_normal((8, 9, 4)), rng.random((2, 8, 9)), lam=1.0)
    for method in relaxed_gd.METHODS:
        capped = adm.solve(problem, BACKEND, method=method, max_iter=3, tol=0.0)
        assert capped.sweeps == 3 and not capped.converged
        assert capped.message == "stopped: 3 iterations (max_iter) reached"
        done = adm.solve(problem, BACKEND, method=method, max_iter=20_000)
        assert done.converged and done.message.startswith("converged: the relaxed energy changed by at most")
    assert relaxed_gd.DEFAULT_MAX_ITER == 1000
    assert adm.solve(problem, BACKEND).sweeps < 100  # the accelerated method, well within the default cap
    # the cap without max_iter: the plain method needs more than 1000 iterations here
    res = adm.solve(problem, BACKEND, method="fixed")
    assert res.sweeps == 1000 and not res.converged and "1000 iterations (max_iter)" in res.message
    # a tolerance of 0: the accelerated method stops once a plain step no longer lowers R
    exact = adm.solve(problem, BACKEND, tol=0.0)
    assert exact.converged and exact.sweeps < 1000


@pytest.mark.parametrize("method", relaxed_gd.METHODS)
def test_history_ends_gives_the_same_result(method):
    rng = np.random.default_rng(7)
    seeds = np.where(rng.random((10, 12)) < 0.1, rng.integers(0, 3, (10, 12)), 255)
    problem = adm.GridCRF(rng.standard_normal((10, 12, 3)), rng.random((4, 10, 12)), lam=1.25, seeds=seeds)
    every = adm.solve(problem, BACKEND, method=method, max_iter=80)
    ends = adm.solve(problem, BACKEND, method=method, max_iter=80, history="ends")
    np.testing.assert_array_equal(ends.labels, every.labels)
    np.testing.assert_array_equal(ends.probs, every.probs)
    assert ends.relaxed_history == every.relaxed_history
    assert ends.sweeps == every.sweeps == len(every.history) - 1
    assert ends.history == [every.history[0], every.history[-1]] and ends.history[-1] == ends.energy


def test_callback_sees_every_iteration():
    rng = np.random.default_rng(8)
    problem = adm.GridCRF(rng.standard_normal((7, 8, 3)), rng.random((2, 7, 8)), lam=1.0)
    seen = []
    res = adm.solve(problem, BACKEND, max_iter=30, callback=lambda t, value: seen.append((t, value)))
    assert seen == list(enumerate(res.relaxed_history))[1:]


@pytest.mark.parametrize("seed", range(4))
def test_seeds_are_respected_with_a_fixed_seed(seed):
    """The same problem and start give the same result (no randomness), and the seeds hold."""
    rng = np.random.default_rng(seed)
    seeds = np.where(rng.random((12, 13)) < 0.2, rng.integers(0, 4, (12, 13)), 255)
    problem = adm.GridCRF(rng.standard_normal((12, 13, 4)), rng.random((4, 12, 13)), lam=2.0, seeds=seeds)
    a, b = adm.solve(problem, BACKEND), adm.solve(problem, BACKEND)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.relaxed_history == b.relaxed_history
    assert not problem.violates_seeds(a.labels)
    assert_valid_probs(problem, a.probs)


# --------------------------------------------------------------------------- Fig. 1 of the paper

WIDTH, WEAK, STRONG = 60, 20, 40
UNARY_SCALE, LAM = 0.1, 1.0


def fig1_problem():
    """A 1-D image (H = 1, W = 60) in the spirit of Fig. 1(a), and its grid-CRF segmentation problem.

    Intensities: 0 on [0, 20), 0.2 on [20, 40), 1 on [40, 60): a weak edge (step 0.2) at t = 20 and a
    strong edge (step 0.8) at t = 40. Edge weights come from ``contrast_weights`` (4-connectivity,
    default Boykov-Jolly sigma^2 = mean squared step = 0.68 / 59): about 1 in the flat parts, 0.176 at
    the weak edge and ~1e-12 at the strong edge. Unaries are a weak intensity model, label 0 = dark
    and label 1 = bright: ``U_p = 0.1 * (|I_p - 0|, |I_p - 1|)``, so the middle segment prefers label 0
    by d = 0.06 per pixel; seeds fix pixel 0 to label 0 and pixel 59 to label 1; lam = 1.

    Segmentations are ``S^t = {x < t}`` -> label 0. Their energies E(t) = lam * w(t) + unaries:
    at t = 40 (strong edge) E = 20 * 0.02 = 0.4 (plus ~1e-12), the global minimum; at t = 20 (weak
    edge) E = 0.176 + 20 * 0.08 = 1.776; every other t costs lam * 1 plus more unaries.

    Why gradient descent stays at t = 20: at the one-hot labeling S^20 each pixel's gradient strictly
    prefers its current label (KKT holds strictly). For the pixel right of the weak edge (label 1)
    ``g_1 - g_0 = d - lam * (1 - w_weak) = 0.06 - 0.82 < 0``; left of it ``g_0 - g_1 = -0.1 - 0.82``;
    inside flat parts the margin is ``2 lam`` minus at most 0.1. A vertex with strict KKT is a strict
    local minimum of the relaxed energy, and the margins (>= 0.76) are far from rounding, so the small
    uniform mixing of the start (1 %) decays back to it. The optimum's margin over it is
    ``lam * (w_weak - w_strong) + 20 * d = 1.376``. Neither depends on fine tuning: the order of the
    energies holds for any unary scale below lam * (1 - w_weak) / 0.6 and any lam > 0.
    """
    intensity = np.zeros(WIDTH)
    intensity[WEAK:STRONG] = 0.2
    intensity[STRONG:] = 1.0
    weights = adm.contrast_weights(intensity[None, :], connectivity=4)
    unary = UNARY_SCALE * np.stack([np.abs(intensity), np.abs(intensity - 1.0)], axis=-1)[None]
    seeds = np.full((1, WIDTH), 255)
    seeds[0, 0], seeds[0, -1] = 0, 1
    return adm.GridCRF(unary, weights, lam=LAM, seeds=seeds), weights


def step_labels(t):
    """The labeling S^t: label 0 left of t, label 1 from t on."""
    return (np.arange(WIDTH) >= t).astype(np.int32)[None, :]


def discontinuities(labels):
    return [int(i) + 1 for i in np.flatnonzero(np.diff(labels[0]) != 0)]


def test_fig1_construction():
    problem, weights = fig1_problem()
    w = weights[0, 0]
    assert math.isclose(w[WEAK - 1], math.exp(-0.04 / (2 * 0.68 / 59)), rel_tol=1e-12)  # ~0.176
    assert w[STRONG - 1] < 1e-10 and w[5] == 1.0
    energies = {t: problem.energy(step_labels(t)) for t in range(1, WIDTH)}
    assert min(energies, key=energies.get) == STRONG
    # t = WEAK is a local minimum among single steps of the discontinuity
    assert energies[WEAK] < energies[WEAK - 1] - 0.5 and energies[WEAK] < energies[WEAK + 1] - 0.5


@pytest.mark.parametrize("offset", [0, -1])
def test_fig1_gradient_descent_stops_at_the_weak_edge(offset):
    problem, _ = fig1_problem()
    optimum = adm.solve(problem, "numba-expansion")  # exact for K = 2 (a single min-cut)
    assert discontinuities(optimum.labels) == [STRONG]
    assert math.isclose(optimum.energy, 0.4, abs_tol=1e-9)

    gd = adm.solve(problem, BACKEND, init=step_labels(WEAK + offset))
    assert gd.converged
    assert discontinuities(gd.labels) == [WEAK]
    assert math.isclose(gd.energy, LAM * math.exp(-0.04 / (2 * 0.68 / 59)) + 20 * 0.08, rel_tol=1e-9)
    assert gd.energy > optimum.energy + 1.3  # margin 1.376
    # GD's soft labels end near one-hot at S^20, not anywhere near the strong edge
    assert np.all(gd.probs[0, WEAK:STRONG, 1] > 0.95)


def test_fig1_gradient_descent_from_the_optimum_stays_there():
    problem, _ = fig1_problem()
    gd = adm.solve(problem, BACKEND, init=step_labels(STRONG))
    assert discontinuities(gd.labels) == [STRONG]
    assert math.isclose(gd.energy, 0.4, abs_tol=1e-9)


# --------------------------------------------------------------------------- CuPy

@pytest.mark.gpu
def test_cupy_matches_numpy():
    rng = np.random.default_rng(11)
    seeds = np.where(rng.random((24, 31)) < 0.1, rng.integers(0, 4, (24, 31)), 255)
    problem = adm.GridCRF(rng.standard_normal((24, 31, 4)), rng.random((4, 24, 31)), lam=1.25,
                          seeds=seeds)
    init = rng.integers(0, 4, (24, 31))
    # the plain method with tol = 0: both run all 200 iterations, whatever the rounding of the GPU's reductions
    cpu = adm.solve(problem, BACKEND, init=init, max_sweeps=200, tol=0.0, device="cpu", method="fixed")
    gpu = adm.solve(problem, BACKEND, init=init, max_sweeps=200, tol=0.0, device="cuda", method="fixed")
    assert gpu.sweeps == cpu.sweeps == 200
    np.testing.assert_allclose(gpu.relaxed_history, cpu.relaxed_history, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gpu.probs, cpu.probs, rtol=0, atol=1e-8)
    assert isinstance(gpu.probs, np.ndarray) and isinstance(gpu.labels, np.ndarray)
    assert np.array_equal(gpu.labels, cpu.labels)
    assert gpu.history == cpu.history
    assert not problem.violates_seeds(gpu.labels)
    # the accelerated method takes or drops each step by comparing energies, which the GPU's rounding may
    # tip when they are nearly equal: the same minimum, not necessarily the same path
    fast_cpu = adm.solve(problem, BACKEND, init=init, device="cpu")
    fast_gpu = adm.solve(problem, BACKEND, init=init, device="cuda")
    assert fast_gpu.relaxed_history[-1] == pytest.approx(fast_cpu.relaxed_history[-1], rel=1e-6)
    assert np.mean(fast_gpu.labels == fast_cpu.labels) >= 0.99
    assert not problem.violates_seeds(fast_gpu.labels)
    problem_1d, _ = fig1_problem()
    res = adm.solve(problem_1d, BACKEND, init=step_labels(WEAK), device="cuda")
    assert discontinuities(res.labels) == [WEAK]
