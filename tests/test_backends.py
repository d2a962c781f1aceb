"""Properties every solver backend must have, checked on random problems, plus the optimality
guarantees of the graph-cut backend (exact for two labels, within the Potts factor 2 otherwise)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import admsolve as adm
from admsolve import backends as registry
from strategies import brute_force, direct_energy, direct_parts, grid_problems, labelings, scale

AVAILABLE = adm.available_backends()
BACKEND_NAMES = [name for name, entry in registry.BACKENDS.items() if entry.problem is adm.GridCRF]
MONOTONE_NAMES = [name for name in BACKEND_NAMES if registry.BACKENDS[name].monotone]


def backend_param(name):
    reason = AVAILABLE.get(name, True)
    marks = () if reason is True else pytest.mark.skip(reason=str(reason))
    return pytest.param(name, marks=marks, id=name)


every_backend = pytest.mark.parametrize("backend", [backend_param(n) for n in BACKEND_NAMES])
every_monotone_backend = pytest.mark.parametrize("backend", [backend_param(n) for n in MONOTONE_NAMES])
#: The alpha-expansion backends (exact for K = 2, within the Potts factor 2 for K > 2).
EXPANSION_NAMES = [name for name in ("maxflow", "numba-expansion") if name in registry.BACKENDS]
every_expansion_backend = pytest.mark.parametrize("backend", [backend_param(n) for n in EXPANSION_NAMES])
#: Backends whose moves are min-cuts: with K = 2 one move is the whole binary problem, so exact.
GRAPH_CUT_NAMES = EXPANSION_NAMES + [name for name in ("numba-swap",) if name in registry.BACKENDS]
every_graph_cut_backend = pytest.mark.parametrize("backend", [backend_param(n) for n in GRAPH_CUT_NAMES])


def assert_non_increasing(history):
    for before, after in zip(history, history[1:]):
        assert after <= before + 1e-9 * scale(before), history
    assert all(h <= history[0] + 1e-9 * scale(history[0]) for h in history), history


def assert_valid_result(problem, res, backend, start_energy):
    height, width = problem.shape
    assert isinstance(res, adm.SolveResult)
    assert res.backend == backend
    labels = res.labels
    assert isinstance(labels, np.ndarray)
    assert np.issubdtype(labels.dtype, np.integer)
    assert labels.shape == (height, width)
    assert labels.min() >= 0 and labels.max() < problem.n_labels
    # seeds hold, by the package's check and directly
    assert not problem.violates_seeds(labels)
    seeded = np.asarray(problem.seeds) != problem.unlabeled
    assert np.array_equal(labels[seeded], np.asarray(problem.seeds)[seeded])
    # energies
    assert res.energy == problem.energy(labels)
    assert math.isclose(res.energy, direct_energy(problem, labels), rel_tol=1e-12, abs_tol=1e-12)
    history = list(res.history)
    assert len(history) >= 1
    assert history[-1] == res.energy
    assert history[0] == start_energy
    if registry.BACKENDS[backend].monotone:
        assert_non_increasing(history)
    assert res.sweeps == len(history) - 1
    assert isinstance(res.converged, (bool, np.bool_))
    assert res.time >= 0


def single_pixel_gain(problem, labels):
    """The largest energy decrease any single change of a free pixel gives (<= 0 at a local min)."""
    energy = problem.energy(labels)
    best = -math.inf
    seeded = problem.seeded
    trial = labels.copy()
    for y, x in zip(*np.nonzero(~seeded)):
        current = trial[y, x]
        for k in range(problem.n_labels):
            if k != current:
                trial[y, x] = k
                best = max(best, energy - problem.energy(trial))
        trial[y, x] = current
    return best, energy


# --------------------------------------------------------------------------- the result contract

@every_backend
@given(data=st.data())
@settings(max_examples=40)
def test_result_contract_default_init(backend, data):
    problem = data.draw(grid_problems(max_side=8))
    res = adm.solve(problem, backend)
    assert_valid_result(problem, res, backend, problem.energy(problem.initial_labels()))
    assert res.converged


@every_backend
@given(data=st.data())
@settings(max_examples=40)
def test_result_contract_random_init(backend, data):
    problem = data.draw(grid_problems(max_side=8))
    init = data.draw(labelings(problem))  # may disagree with the seeds: solve applies them
    init_before = init.copy()
    res = adm.solve(problem, backend, init=init)
    assert np.array_equal(init, init_before)
    assert_valid_result(problem, res, backend, problem.energy(problem.apply_seeds(init)))
    assert res.converged


@every_monotone_backend
@given(data=st.data())
@settings(max_examples=40)
def test_result_is_a_single_pixel_local_minimum(backend, data):
    """ICM stops at a local minimum for single-pixel changes; so does alpha-expansion (a
    single-pixel change to alpha is an alpha-expansion move), and so does the exact K = 2 cut."""
    problem = data.draw(grid_problems(max_side=7))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    res = adm.solve(problem, backend, init=init)
    gain, energy = single_pixel_gain(problem, res.labels)
    assert gain <= 1e-9 * scale(energy), f"a single-pixel change lowers E by {gain}"


@every_backend
@given(data=st.data())
@settings(max_examples=30)
def test_one_label_is_trivial(backend, data):
    problem = data.draw(grid_problems(min_labels=1, max_labels=1))
    res = adm.solve(problem, backend)
    assert np.array_equal(res.labels, np.zeros(problem.shape))
    assert math.isclose(res.energy, float(np.asarray(problem.unary, float).sum()), rel_tol=1e-12,
                        abs_tol=1e-12)
    assert res.converged


@every_monotone_backend
@given(data=st.data())
@settings(max_examples=30)
def test_no_smoothness_gives_per_pixel_optimum(backend, data):
    problem = data.draw(grid_problems(max_side=8, lam=0.0))
    unary = np.asarray(problem.unary, float)
    optimum = float(np.where(problem.seeded,
                             np.take_along_axis(unary, np.where(problem.seeded, problem.seeds, 0)[..., None],
                                                axis=2)[..., 0],
                             unary.min(axis=2)).sum())
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    res = adm.solve(problem, backend, init=init)
    assert math.isclose(res.energy, optimum, rel_tol=1e-12, abs_tol=1e-12)


@every_backend
def test_everything_seeded_returns_the_seeds(backend):
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 3, (4, 5))
    problem = adm.GridCRF(rng.standard_normal((4, 5, 3)), rng.random((4, 4, 5)), lam=2.0, seeds=seeds)
    res = adm.solve(problem, backend, init=np.zeros((4, 5), int))
    assert np.array_equal(res.labels, seeds)


# --------------------------------------------------------------------------- max_sweeps

@every_backend
@given(data=st.data())
@settings(max_examples=30)
def test_max_sweeps_bounds_the_sweeps(backend, data):
    problem = data.draw(grid_problems(max_side=8))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    full = adm.solve(problem, backend, init=init)
    for max_sweeps in (1, 2):
        res = adm.solve(problem, backend, init=init, max_sweeps=max_sweeps)
        assert res.sweeps <= max_sweeps
        assert len(res.history) <= max_sweeps + 1
        assert_valid_result(problem, res, backend, full.history[0])
        # deterministic backends: a capped run is a prefix of the full run
        assert list(res.history) == list(full.history[:len(res.history)])
        if res.sweeps == full.sweeps:
            assert np.array_equal(res.labels, full.labels)
    capped = adm.solve(problem, backend, init=init, max_sweeps=max(full.sweeps, 1))
    assert np.array_equal(capped.labels, full.labels)
    assert capped.energy == full.energy


@every_backend
def test_solve_is_deterministic(backend):
    rng = np.random.default_rng(1)
    problem = adm.GridCRF(rng.integers(-8, 8, (6, 7, 4)) / 4, rng.integers(0, 4, (4, 6, 7)) / 2,
                          lam=1.0)
    a, b = adm.solve(problem, backend), adm.solve(problem, backend)
    assert np.array_equal(a.labels, b.labels) and a.history == b.history


# --------------------------------------------------------------------------- optimality (expansion)

@every_graph_cut_backend
@given(data=st.data())
@settings(max_examples=60)
def test_two_labels_is_exact(backend, data):
    problem = data.draw(grid_problems(min_labels=2, max_labels=2, max_pixels=12))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    res = adm.solve(problem, backend, init=init)
    optimum = brute_force(problem)
    assert abs(res.energy - optimum) <= 1e-9 * scale(optimum), (res.energy, optimum)
    assert not problem.violates_seeds(res.labels)


@every_expansion_backend
@given(data=st.data())
@settings(max_examples=40)
def test_expansion_within_potts_bound(backend, data):
    """At an alpha-expansion local minimum x^, data(x^) + smooth(x^) <= data(x*) + 2 smooth(x*)
    (Boykov, Veksler & Zabih 2001), seeds included: each expansion towards x* keeps them."""
    problem = data.draw(grid_problems(min_labels=3, max_labels=4, max_labelings=50_000))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    res = adm.solve(problem, backend, init=init)
    assert res.converged
    optimum, best = brute_force(problem, return_labels=True)
    best_data, best_cut = direct_parts(problem, best)
    bound = best_data + 2 * problem.lam * best_cut
    assert res.energy >= optimum - 1e-9 * scale(optimum)
    assert res.energy <= bound + 1e-8 * scale(bound, optimum), (res.energy, optimum, bound)


@every_expansion_backend
@given(data=st.data())
@settings(max_examples=40)
def test_expansion_factor_two_with_nonnegative_unaries(backend, data):
    problem = data.draw(grid_problems(min_labels=3, max_labels=4, max_labelings=50_000,
                                      nonnegative=True))
    res = adm.solve(problem, backend)
    optimum = brute_force(problem)
    assert optimum - 1e-9 * scale(optimum) <= res.energy <= 2 * optimum + 1e-8 * scale(optimum)


# --------------------------------------------------------------------------- solve_batch

def batch_problems():
    rng = np.random.default_rng(7)
    problems = []
    for (h, w, k, d) in [(5, 6, 3, 2), (4, 4, 2, 4), (6, 3, 4, 4)]:
        seeds = np.where(rng.random((h, w)) < 0.2, rng.integers(0, k, (h, w)), 255)
        problems.append(adm.GridCRF(rng.integers(-8, 8, (h, w, k)) / 4, rng.integers(0, 3, (d, h, w)) / 2,
                                    lam=1.25, seeds=seeds))
    inits = [None, rng.integers(0, 2, (4, 4)), None]
    return problems, inits


@every_backend
@pytest.mark.parametrize("workers", [1, 2])
def test_solve_batch_matches_solve_in_order(backend, workers):
    problems, inits = batch_problems()
    results = adm.solve_batch(problems, backend, workers=workers, inits=inits)
    assert len(results) == len(problems)
    for problem, init, res in zip(problems, inits, results):
        alone = adm.solve(problem, backend, init=init)
        assert res.backend == backend
        assert res.labels.shape == problem.shape
        assert np.array_equal(res.labels, alone.labels)
        assert res.energy == alone.energy
        assert list(res.history) == list(alone.history)
        assert res.sweeps == alone.sweeps and res.converged == alone.converged
        assert res.energy == problem.energy(res.labels)


@every_backend
@pytest.mark.parametrize("workers", [1, 2])
def test_solve_batch_reraises_with_index(backend, workers):
    problems, _ = batch_problems()
    bad = np.full(problems[1].shape, problems[1].n_labels)  # out of range
    with pytest.raises(ValueError, match="init") as info:
        adm.solve_batch(problems, backend, workers=workers, inits=[None, bad, bad])
    assert info.value.index == 1
    assert any("problems[1]" in note for note in getattr(info.value, "__notes__", []))


def test_solve_batch_empty():
    assert adm.solve_batch([], workers=2) == []


# --------------------------------------------------------------------------- names and options

@every_backend
def test_unknown_option_raises_type_error_naming_it(backend):
    problem = adm.GridCRF(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="bogus_option"):
        adm.solve(problem, backend, bogus_option=3)


def test_unknown_backend_lists_the_names():
    problem = adm.GridCRF(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError) as info:
        adm.solve(problem, "no-such-solver")
    message = str(info.value)
    assert "no-such-solver" in message
    for name in registry.BACKENDS:
        assert name in message


def test_default_backend_is_an_available_one():
    problem = adm.GridCRF(np.zeros((2, 3, 2)), np.ones((2, 2, 3)))
    res = adm.solve(problem)
    assert AVAILABLE[res.backend] is True
    assert set(AVAILABLE) == set(registry.BACKENDS)
