"""The move-making backends against each other: numba-expansion is the same algorithm as maxflow
on another max-flow, label-subset expansion (labels=) and alpha-beta swap."""

import dataclasses
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import admsolve as adm
from admsolve.backends import moves
from admsolve.backends._gridflow import SINK, GridMaxflow
from strategies import brute_force, grid_problems, labelings, rngs, scale

needs_maxflow = pytest.mark.skipif(adm.available_backends()["maxflow"] is not True,
                                   reason=str(adm.available_backends()["maxflow"]))


@st.composite
def continuous_problems(draw, max_side=10, max_labels=6):
    """Problems with continuous random costs, so minimum cuts are unique (no ties) almost surely."""
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    n_labels = draw(st.integers(2, max_labels))
    n_directions = draw(st.sampled_from([2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    seeds = np.where(rng.random((height, width)) < draw(st.sampled_from([0.0, 0.1, 0.3])),
                     rng.integers(0, n_labels, (height, width)), 255)
    return adm.GridCRF(rng.normal(0, 2, (height, width, n_labels)), rng.random((n_directions, height, width)),
                       lam=draw(st.floats(0.1, 3.0)), seeds=seeds)


@needs_maxflow
@given(problem=continuous_problems(), data=st.data())
@settings(max_examples=60)
def test_numba_expansion_equals_maxflow(problem, data):
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    ours = adm.solve(problem, "numba-expansion", init=init)
    theirs = adm.solve(problem, "maxflow", init=init)
    assert np.array_equal(ours.labels, theirs.labels)
    assert len(ours.history) == len(theirs.history)
    for a, b in zip(ours.history, theirs.history):
        assert abs(a - b) <= 1e-9 * scale(a, b)


@needs_maxflow
def test_numba_expansion_equals_maxflow_on_a_large_seeded_problem():
    rng = np.random.default_rng(3)
    height, width, n_labels = 60, 70, 7
    seeds = np.full((height, width), 255)
    seeds[10:12, 5:60] = 2
    seeds[40:50, 30] = 5
    problem = adm.GridCRF(rng.normal(0, 2, (height, width, n_labels)),
                          adm.contrast_weights(rng.random((height, width, 3)), connectivity=8), lam=3.0,
                          seeds=seeds)
    ours, theirs = adm.solve(problem, "numba-expansion"), adm.solve(problem, "maxflow")
    assert np.array_equal(ours.labels, theirs.labels)
    np.testing.assert_allclose(ours.history, theirs.history, rtol=1e-9)


@given(problem=continuous_problems(), data=st.data())
@settings(max_examples=80)
def test_resumed_expansion_move_cuts_as_a_fresh_one(problem, data):
    """numba-expansion solves a label's later moves on the residual graph of its previous one,
    updated for the labels changed since: the sink side must be that of the move solved afresh."""
    first = problem.apply_seeds(data.draw(labelings(problem), label="first"))
    second = np.where(data.draw(rngs(), label="rng").random(problem.shape) < 0.3,
                      problem.apply_seeds(data.draw(labelings(problem), label="changes")), first)
    alpha = data.draw(st.integers(0, problem.n_labels - 1), label="alpha")
    unary, weights = moves.label_major_unary(problem), problem.lam * problem.weights
    solver = GridMaxflow(*problem.shape, weights.shape[0])
    resumed, fresh = solver.residual_graphs(2)
    snapshots = np.empty((2, *problem.shape), dtype=np.int32)

    def move(labels, graph, snapshot, is_fresh):
        """The labels after the move and its sink side off alpha (where it changes something)."""
        labels = labels.astype(np.int32)
        moves.expand_in_place(unary, weights, labels, problem.seeded, moves.pin_capacity(problem, unary), alpha,
                              problem.energy(labels), np.empty(problem.shape[1]), graph, snapshot, is_fresh)
        return labels, (graph[5] == SINK).reshape(problem.shape) & (snapshot != alpha)

    move(first, resumed, snapshots[0], True)
    got_labels, got_side = move(second, resumed, snapshots[0], False)
    want_labels, want_side = move(second, fresh, snapshots[1], True)
    np.testing.assert_array_equal(got_side, want_side)
    np.testing.assert_array_equal(got_labels, want_labels)


@given(problem=continuous_problems(max_side=12), data=st.data())
@settings(max_examples=80)
def test_a_fresh_graph_refreshed_near_changed_labels_is_the_fresh_graph_of_the_new_labels(problem, data):
    """_refresh_graph rewrites only the entries next to changed labels (all of them when many changed):
    bit for bit the graph built from the new labels, window edges and image borders included."""
    old = problem.apply_seeds(data.draw(labelings(problem), label="old")).astype(np.int32)
    changed = data.draw(rngs(), label="rng").random(problem.shape) < data.draw(st.sampled_from([0.02, 0.1, 1.0]))
    new = np.where(changed, problem.apply_seeds(data.draw(labelings(problem), label="new")), old).astype(np.int32)
    alpha = data.draw(st.integers(0, problem.n_labels - 1), label="alpha")
    unary, weights = moves.label_major_unary(problem), problem.lam * problem.weights
    pin_cap, delta = moves.pin_capacity(problem, unary), np.empty(problem.shape[1])
    graphs = []
    for start in (old, new):
        cap, tr = np.zeros((2 * weights.shape[0], new.size)), np.zeros(new.size)
        moves._fresh_graph(unary, weights, start, problem.seeded, pin_cap, alpha, delta, cap, tr, False)
        graphs.append((cap, tr))
    (cap, tr), (want_cap, want_tr) = graphs
    moves._refresh_graph(unary, weights, old, new, problem.seeded, pin_cap, alpha, delta, cap, tr)
    assert np.array_equal(cap.view(np.int64), want_cap.view(np.int64))
    assert np.array_equal(tr.view(np.int64), want_tr.view(np.int64))


@pytest.mark.parametrize("backend", ["numba-expansion", "numba-swap"])
@given(data=st.data())
@settings(max_examples=40)
def test_label_subset_moves_only_to_those_labels(backend, data):
    problem = data.draw(grid_problems(min_labels=2, max_labels=5, max_side=8))
    init = data.draw(labelings(problem), label="init")
    subset = data.draw(st.lists(st.integers(0, problem.n_labels - 1), min_size=1, unique=True), label="labels")
    start = problem.apply_seeds(init)
    res = adm.solve(problem, backend, init=init, labels=subset)
    changed = res.labels != start
    assert np.isin(res.labels[changed], subset).all()
    if backend == "numba-swap":  # a swap also takes pixels only from labels in the subset
        assert np.isin(start[changed], subset).all()
    assert not problem.violates_seeds(res.labels)
    assert res.energy <= problem.energy(start) + 1e-9 * scale(res.energy)


@pytest.mark.parametrize("backend", ["numba-expansion", "numba-swap"])
@given(problem=continuous_problems(max_side=6))
@settings(max_examples=30)
def test_label_subset_of_all_labels_is_the_full_run(backend, problem):
    full = adm.solve(problem, backend)
    subset = adm.solve(problem, backend, labels=list(range(problem.n_labels))[::-1])
    assert np.array_equal(full.labels, subset.labels)
    assert full.history == subset.history


@pytest.mark.parametrize("labels, message", [
    ([], r"labels: expected a non-empty sequence"),
    ([0, 3], r"labels: expected distinct values in \[0, 3\), got \[0, 3\]"),
    ([1, 1], r"labels: expected distinct values in \[0, 3\), got \[1, 1\]"),
    ([0.5], r"labels: expected a non-empty sequence of label indices"),
])
@pytest.mark.parametrize("backend", ["numba-expansion", "numba-swap"])
def test_bad_label_subset(backend, labels, message):
    problem = adm.GridCRF(np.zeros((2, 2, 3)), np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=message):
        adm.solve(problem, backend, labels=labels)


@given(data=st.data())
@settings(max_examples=60)
def test_swap_with_two_labels_is_exact(data):
    problem = data.draw(grid_problems(min_labels=2, max_labels=2, max_pixels=12))
    init = data.draw(st.one_of(st.none(), labelings(problem)), label="init")
    res = adm.solve(problem, "numba-swap", init=init)
    optimum = brute_force(problem)
    assert abs(res.energy - optimum) <= 1e-9 * scale(optimum)


@given(problem=continuous_problems(max_side=12))
@settings(max_examples=30)
def test_swap_from_an_expansion_optimum_stays_below_it(problem):
    """Swap accepts only improving moves, so started at expansion's result it never ends higher."""
    start = adm.solve(problem, "numba-expansion")
    res = adm.solve(problem, "numba-swap", init=start.labels)
    assert res.energy <= start.energy + 1e-9 * scale(start.energy)
    assert res.converged


def test_threads_are_used_for_numba_backends_and_agree_with_serial(monkeypatch):
    solve_module = importlib.import_module("admsolve.solve")  # (admsolve.solve is also the function)

    threaded_calls = []
    run_in_threads = solve_module.run_in_threads
    monkeypatch.setattr(solve_module, "run_in_threads", lambda function, jobs, workers:
                        threaded_calls.append(workers) or run_in_threads(function, jobs, workers))
    rng = np.random.default_rng(5)
    problems = [adm.GridCRF(rng.normal(size=(80, 80, 4)), rng.random((2, 80, 80)), lam=1.0) for _ in range(4)]
    serial = adm.solve_batch(problems, "numba-expansion", workers=1)
    threaded = adm.solve_batch(problems, "numba-expansion", workers=2)
    assert threaded_calls == [2]
    for a, b in zip(serial, threaded):
        assert np.array_equal(a.labels, b.labels) and a.history == b.history


@pytest.mark.parametrize("backend", ["numba-expansion", "numba-swap", "numba-icm"])
def test_problems_below_the_backend_s_threads_from_are_solved_in_the_calling_thread(backend, monkeypatch):
    """On small problems two threads were slower than one (starting them, and the GIL around each solve of a
    batch not solved together): solve_batch runs them in the calling thread, whatever `workers`; one problem
    at the threshold brings the threads, whether the batch is solved together (one shape) or not."""
    solve_module = importlib.import_module("admsolve.solve")  # (admsolve.solve is also the function)

    threaded_calls = []
    for name in ("_solve_in_threads", "run_in_threads"):  # problem by problem, and solved together
        monkeypatch.setattr(solve_module, name, lambda *args, original=getattr(solve_module, name):
                            threaded_calls.append(args[-1]) or original(*args))
    threads_from = adm.backends.BACKENDS[backend].threads_from
    rng = np.random.default_rng(6)
    side = int(np.sqrt(threads_from / 4)) - 1  # 4 labels: just under the threshold
    small = [adm.GridCRF(rng.normal(size=(side, side, 4)), rng.random((2, side, side)), lam=1.0) for _ in range(3)]
    assert [r.energy for r in adm.solve_batch(small, backend, workers=2)] == \
        [adm.solve(problem, backend).energy for problem in small]
    assert threaded_calls == []
    big = [adm.GridCRF(rng.normal(size=(side + 2, side + 2, 4)), rng.random((2, side + 2, side + 2)), lam=1.0)
           for _ in range(2)]
    adm.solve_batch(big, backend, workers=2)
    adm.solve_batch([*small, big[0]], backend, workers=2)
    assert threaded_calls == [2, 2]


@pytest.mark.parametrize("backend", [name for name, entry in adm.backends.BACKENDS.items() if entry.solves_batches])
@given(data=st.data(), workers=st.sampled_from([1, 2, 3]))
@settings(max_examples=30)
def test_a_batch_solved_together_is_solved_as_one_problem_at_a_time(backend, data, workers):
    """numba-expansion and numba-swap solve each thread's share of a batch of one shape in one compiled call (no
    GIL between problems): the results of solve() one problem at a time, per-problem options included."""
    module = importlib.import_module(adm.backends.BACKENDS[backend].module)
    calls = []
    minimize_batch = module.minimize_batch
    first = data.draw(continuous_problems(), label="first")
    count = data.draw(st.integers(1, 5), label="count")
    rng = data.draw(rngs(), label="rng")
    problems = [first] + [adm.GridCRF(rng.normal(0, 2, first.unary.shape), rng.random(first.weights.shape),
                                      lam=float(rng.uniform(0.1, 3.0)), seeds=first.seeds) for _ in range(count - 1)]
    inits = [data.draw(st.none() | labelings(problem)) for problem in problems]
    extra = [{"max_iter": data.draw(st.sampled_from([None, 1, 3]))} for _ in problems]
    if adm.backends.BACKENDS[backend].takes_labels:
        for entry in extra:
            entry["labels"] = data.draw(st.none() | st.lists(st.integers(0, first.n_labels - 1), min_size=1,
                                                               unique=True))
    shared = {"memory": data.draw(st.sampled_from(["auto", "fast", "lean"]))} if backend == "numba-expansion" else {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "minimize_batch",
                      lambda problems, *rest: calls.append(len(problems)) or minimize_batch(problems, *rest))
        patch.setitem(adm.backends.BACKENDS, backend,
                      dataclasses.replace(adm.backends.BACKENDS[backend], threads_from=0))
        together = adm.solve_batch(problems, backend, workers=workers, inits=inits, problem_options=extra, **shared)
    threads = min(workers, count)
    assert sorted(calls) == sorted(len(range(t, count, threads)) for t in range(threads))
    for problem, init, options, result in zip(problems, inits, extra, together):
        alone = adm.solve(problem, backend, init=init, **shared, **options)
        assert np.array_equal(result.labels, alone.labels)
        for key in ("energy", "history", "sweeps", "converged", "message", "memory"):
            assert result.get(key) == alone.get(key), key


@given(problem=continuous_problems(), data=st.data())
@settings(max_examples=60)
def test_the_memory_layouts_make_the_same_moves(problem, data):
    """numba-expansion's "lean" layout solves every move afresh in one graph, "fast" resumes each
    label's residual graph: the same labels and energies, sweep by sweep."""
    init = problem.apply_seeds(data.draw(labelings(problem), label="init"))
    subset = data.draw(st.none() | st.lists(st.integers(0, problem.n_labels - 1), min_size=1, unique=True),
                       label="labels")
    max_iter = data.draw(st.sampled_from([None, 1, 2]), label="max_iter")
    fast, lean = (adm.solve(problem, "numba-expansion", init=init, labels=subset, max_iter=max_iter, memory=memory)
                  for memory in ("fast", "lean"))
    assert (fast.memory, lean.memory) == ("fast", "lean")
    np.testing.assert_array_equal(fast.labels, lean.labels)
    np.testing.assert_allclose(fast.history, lean.history, rtol=1e-9)


def test_auto_memory_turns_lean_when_the_residual_graphs_would_take_too_much(monkeypatch):
    from admsolve.backends import numba_expansion

    rng = np.random.default_rng(0)
    problem = adm.GridCRF(rng.random((40, 30, 5)), rng.random((4, 40, 30)), lam=0.5)
    needed = numba_expansion.residual_bytes(problem.shape, 4, problem.n_labels)
    assert needed == 40 * 30 * 5 * (9 * 8 + 4)
    monkeypatch.setattr(numba_expansion, "available_memory", lambda: 2 * needed)  # the fast graphs: half of it
    small = adm.solve(problem, "numba-expansion")
    assert small.memory == "lean" and "memory='auto' chose the lean layout" in small.message
    assert small.message.startswith("converged")  # the reason it stopped comes first
    monkeypatch.setattr(numba_expansion, "available_memory", lambda: 4 * needed)  # a quarter: fast still fits
    roomy = adm.solve(problem, "numba-expansion")
    assert roomy.memory == "fast" and "memory=" not in roomy.message
    np.testing.assert_array_equal(small.labels, roomy.labels)
    assert numba_expansion.available_memory() > 0  # the real figure, read from this machine


def test_the_lean_layout_keeps_what_the_flows_changed_within_its_budget():
    """Peak memory traced while solving to convergence: the fast layout adds about residual_bytes, the
    lean one at most LEAN_BUDGET whole graphs of changed entries (16 bytes each) and a labeling per label
    beyond what one working graph needs (measured as lean with max_iter=1: nothing kept)."""
    import tracemalloc

    from admsolve.backends import numba_expansion

    rng = np.random.default_rng(1)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(96, 96, 12)), 0), 1) / 20  # unaries that vary smoothly
    problem = adm.GridCRF(smooth - smooth.min(), rng.random((4, 96, 96)), lam=1.0)
    for memory in ("fast", "lean"):
        adm.solve(problem, "numba-expansion", memory=memory)  # compiled before measuring
    peaks, results = {}, {}
    for name, options in (("fast", dict(memory="fast")), ("lean", dict(memory="lean")),
                          ("one graph", dict(memory="lean", max_iter=1))):
        tracemalloc.start()
        results[name] = adm.solve(problem, "numba-expansion", **options)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert results["lean"].sweeps > 1
    pixels, residuals = 96 * 96, numba_expansion.residual_bytes(problem.shape, 4, problem.n_labels)
    assert peaks["fast"] - peaks["lean"] >= 0.5 * residuals
    assert peaks["lean"] - peaks["one graph"] <= moves.LEAN_BUDGET * 9 * pixels * 16 + 12 * pixels * 4 + 2**16


def test_an_unknown_memory_layout_is_refused():
    problem = adm.GridCRF(np.zeros((4, 4, 3)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="memory: expected one of 'auto', 'fast', 'lean', got 'small'"):
        adm.solve(problem, "numba-expansion", memory="small")


def test_a_lean_move_keeps_its_residual_graph_as_entries_off_the_fresh_graph_of_its_start():
    """expand_sparse's contract, move after move: the entries it returns, written over the fresh graph
    of the labels its move started from (its snapshot), give back exactly the residual graph its
    max-flow left; resumed moves included (whose start differs from the labels they were kept at)."""
    from admsolve.backends._gridflow import GridMaxflow
    from admsolve.backends.moves import _fresh_graph, expand_sparse, label_major_unary, pin_capacity

    rng = np.random.default_rng(4)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(24, 20, 5)), 0), 1) / 10
    problem = adm.GridCRF(smooth - smooth.min() + rng.random((24, 20, 5)), rng.random((4, 24, 20)), lam=1.5)
    unary, weights = label_major_unary(problem), problem.lam * problem.weights
    labels = np.zeros(problem.shape, np.int64)
    graph = GridMaxflow(*problem.shape, 4).graph
    rows, n = graph[3].shape
    scratch = (np.zeros((rows, n)), np.zeros(n), np.empty(n // 7, np.int64), np.empty(n // 7))  # (some overflow)
    delta = np.empty(problem.shape[1])
    snapshots = np.zeros((problem.n_labels, *problem.shape), np.int64)
    kept = [(np.empty(0, np.int64), np.empty(0), False)] * problem.n_labels
    resumed, sizes = 0, []
    for _ in range(3):
        for alpha in range(problem.n_labels):
            index, value, resume = kept[alpha]
            resumed += resume
            _, index, value, keep = expand_sparse(unary, weights, labels, problem.seeded, pin_capacity(problem, unary), alpha,
                                                  problem.energy_scale, delta, graph,
                                                  *scratch, snapshots[alpha], index, value, resume, 10 ** 9)
            assert keep
            sizes.append(index.size)
            kept[alpha] = (index, value, True)
            cap, tr = np.zeros((rows, n)), np.zeros(n)
            _fresh_graph(unary, weights, snapshots[alpha], problem.seeded, pin_capacity(problem, unary), alpha,
                         delta, cap, tr, True)
            rebuilt = np.concatenate([cap.ravel(), tr])
            rebuilt[index] = value
            np.testing.assert_array_equal(rebuilt, np.concatenate([graph[3].ravel(), graph[4]]))
    assert resumed >= 2 * problem.n_labels
    assert min(sizes) <= scratch[2].size < max(sizes)  # entries that fit the scratch, and more than fit
