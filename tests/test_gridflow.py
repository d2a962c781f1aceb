"""Tests of the Numba Boykov-Kolmogorov grid max-flow (admsolve.backends._gridflow)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, strategies as st
from scipy.sparse.csgraph import maximum_flow

from admsolve.backends._gridflow import FORWARD_OFFSETS, SINK, GridMaxflow, resume_max_flow


# --- helpers -------------------------------------------------------------------------------------


def grid_edges(height, width, n_directions):
    """(d, y, x, qy, qx) for every edge of the grid that stays inside the image."""
    edges = []
    for d, (dy, dx) in enumerate(FORWARD_OFFSETS[:n_directions]):
        for y in range(height):
            for x in range(width):
                qy, qx = y + dy, x + dx
                if 0 <= qy < height and 0 <= qx < width:
                    edges.append((d, y, x, qy, qx))
    return edges


def scipy_graph(source_cap, sink_cap, fwd_cap, bwd_cap):
    """The same graph as a CSR matrix with int32 capacities; source = N, sink = N + 1."""
    height, width = source_cap.shape
    n = height * width
    rows, cols, vals = [], [], []
    for p in range(n):
        y, x = divmod(p, width)
        rows += [n, p]
        cols += [p, n + 1]
        vals += [source_cap[y, x], sink_cap[y, x]]
    for d, y, x, qy, qx in grid_edges(height, width, fwd_cap.shape[0]):
        p, q = y * width + x, qy * width + qx
        rows += [p, q]
        cols += [q, p]
        vals += [fwd_cap[d, y, x], bwd_cap[d, y, x]]
    vals = np.asarray(vals)
    assert np.all(vals == np.round(vals)) and vals.max(initial=0) < 2**31
    graph = scipy.sparse.coo_matrix(
        (vals.astype(np.int32), (rows, cols)), shape=(n + 2, n + 2)
    ).tocsr()  # parallel edges are summed
    graph.eliminate_zeros()
    return graph, n, n + 1


def scipy_maxflow(*problem):
    """Max-flow value by scipy (integer capacities)."""
    graph, source, sink = scipy_graph(*problem)
    return maximum_flow(graph, source, sink).flow_value


def scipy_sink_side(*problem):
    """(H, W) bool: True where the node can reach the sink in the residual graph of scipy's maximum
    flow (this set is the same for every maximum flow)."""
    graph, source, sink = scipy_graph(*problem)
    flow = maximum_flow(graph, source, sink).flow.toarray()
    residual = graph.toarray().astype(np.int64) - flow
    reaches = np.zeros(graph.shape[0], dtype=bool)
    reaches[sink] = True
    stack = [sink]
    while stack:
        v = stack.pop()
        for u in np.flatnonzero((residual[:, v] > 0) & ~reaches):
            reaches[u] = True
            stack.append(u)
    return reaches[:source].reshape(problem[0].shape)


def cut_value(source_cap, sink_cap, fwd_cap, bwd_cap, sink_side):
    """Total capacity of the edges from source-side to sink-side nodes (terminals included)."""
    total = source_cap[sink_side].sum() + sink_cap[~sink_side].sum()
    for d, y, x, qy, qx in grid_edges(*source_cap.shape, fwd_cap.shape[0]):
        if not sink_side[y, x] and sink_side[qy, qx]:
            total += fwd_cap[d, y, x]
        if sink_side[y, x] and not sink_side[qy, qx]:
            total += bwd_cap[d, y, x]
    return total


def outside_mask(height, width, n_directions):
    """(D, H, W) True where the edge of that direction leaves the image."""
    mask = np.ones((n_directions, height, width), dtype=bool)
    for d, y, x, _, _ in grid_edges(height, width, n_directions):
        mask[d, y, x] = False
    return mask


@st.composite
def grid_problems(draw, max_side=8, max_cap=6, shape=None):
    """(source_cap, sink_cap, fwd_cap, bwd_cap) with small integer capacities, often many zeros.

    shape, if given, is a fixed (height, width, n_directions)."""
    if shape is None:
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)),
                 draw(st.sampled_from([2, 4])))
    height, width, n_directions = shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    zero_fraction = draw(st.sampled_from([0.0, 0.3, 0.6, 0.9]))

    def caps(shape):
        values = rng.integers(1, max_cap + 1, size=shape)
        return np.where(rng.random(shape) >= zero_fraction, values, 0).astype(np.float64)

    return (caps((height, width)), caps((height, width)),
            caps((n_directions, height, width)), caps((n_directions, height, width)))


@st.composite
def same_shape_problems(draw):
    """2 to 5 problems on one grid shape."""
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.sampled_from([2, 4])))
    return shape, draw(st.lists(grid_problems(shape=shape), min_size=2, max_size=5))


@pytest.fixture(scope="module", autouse=True)
def _compile_once():
    """Compile (or load from cache) before the hypothesis tests, so no example hits a deadline."""
    for n_directions in (2, 4):
        shape = (n_directions, 2, 2)
        GridMaxflow(2, 2, n_directions).solve(np.ones((2, 2)), np.ones((2, 2)),
                                              np.ones(shape), np.ones(shape))


def check_cut(flow, problem, sink_side):
    cut = cut_value(*problem, sink_side)
    assert cut == pytest.approx(flow, rel=1e-9, abs=1e-9)


# --- tests ---------------------------------------------------------------------------------------


@given(grid_problems())
def test_flow_matches_scipy_and_cut_is_minimum(problem):
    source_cap, sink_cap, fwd_cap = problem[:3]
    height, width = source_cap.shape
    solver = GridMaxflow(height, width, fwd_cap.shape[0])
    flow = solver.solve(*problem)
    assert flow == scipy_maxflow(*problem)  # integer inputs: exact
    assert solver.sink_side.shape == (height, width) and solver.sink_side.dtype == bool
    np.testing.assert_array_equal(solver.sink_side, scipy_sink_side(*problem))
    check_cut(flow, problem, solver.sink_side)


@given(grid_problems(), st.integers(0, 2**32 - 1))
def test_float_capacities_give_a_minimum_cut(problem, seed):
    rng = np.random.default_rng(seed)
    problem = tuple(c * rng.random(c.shape) * 3.7 for c in problem)
    height, width = problem[0].shape
    solver = GridMaxflow(height, width, problem[2].shape[0])
    flow = solver.solve(*problem)
    assert np.isfinite(flow) and flow >= 0
    check_cut(flow, problem, solver.sink_side)


@given(grid_problems(), st.integers(0, 2**32 - 1))
def test_huge_capacities(problem, seed):
    """Some capacities are 1e12: the flow is a * 1e12 + b (exact in float64), with a and b found
    from two scipy runs where the huge value M is replaced by two ints larger than all others."""
    rng = np.random.default_rng(seed)
    huge_masks = [rng.random(c.shape) < 0.2 for c in problem]

    def with_huge(value):
        return tuple(np.where(m, value, c) for c, m in zip(problem, huge_masks))

    small_total = sum(c.sum() for c in problem) + 1
    m1, m2 = int(small_total), 2 * int(small_total)
    f1, f2 = scipy_maxflow(*with_huge(m1)), scipy_maxflow(*with_huge(m2))
    a = (f2 - f1) // (m2 - m1)
    b = f1 - a * m1
    assert f2 == a * m2 + b
    huge_problem = with_huge(1e12)
    height, width = problem[0].shape
    solver = GridMaxflow(height, width, problem[2].shape[0])
    flow = solver.solve(*huge_problem)
    assert flow == a * 1e12 + b
    check_cut(flow, huge_problem, solver.sink_side)


@given(grid_problems(), st.integers(-40, 40))
def test_power_of_two_scaling_is_exact(problem, exponent):
    """Scaling all capacities by 2**e scales the max-flow exactly (e.g. 2**40 ~ 1.1e12)."""
    height, width = problem[0].shape
    solver = GridMaxflow(height, width, problem[2].shape[0])
    flow = solver.solve(*problem)
    scale = 2.0**exponent
    assert solver.solve(*(c * scale for c in problem)) == flow * scale


@given(same_shape_problems())
def test_workspace_reuse(shape_and_problems):
    """One instance solving several graphs in a row agrees with fresh instances."""
    shape, problems = shape_and_problems
    shared = GridMaxflow(*shape)
    for problem in problems:
        flow = shared.solve(*problem)
        fresh = GridMaxflow(*shape)
        assert flow == fresh.solve(*problem)
        np.testing.assert_array_equal(shared.sink_side, fresh.sink_side)
        assert flow == scipy_maxflow(*problem)


@given(grid_problems())
def test_inputs_are_not_modified(problem):
    copies = [c.copy() for c in problem]
    height, width = problem[0].shape
    GridMaxflow(height, width, problem[2].shape[0]).solve(*problem)
    for original, copy in zip(problem, copies):
        np.testing.assert_array_equal(original, copy)


@given(grid_problems(), st.sampled_from([1e9, 1e300, np.inf, np.nan, -5.0]))
def test_capacities_leaving_the_image_are_ignored(problem, garbage):
    source_cap, sink_cap, fwd_cap, bwd_cap = problem
    height, width = source_cap.shape
    n_directions = fwd_cap.shape[0]
    outside = outside_mask(height, width, n_directions)
    solver = GridMaxflow(height, width, n_directions)
    flow = solver.solve(*problem)
    sink_side = solver.sink_side.copy()
    garbage_fwd = np.where(outside, garbage, fwd_cap)
    garbage_bwd = np.where(outside, garbage, bwd_cap)
    assert solver.solve(source_cap, sink_cap, garbage_fwd, garbage_bwd) == flow
    np.testing.assert_array_equal(solver.sink_side, sink_side)


@given(same_shape_problems(), st.integers(0, 2**32 - 1))
def test_resumed_flow_after_capacity_changes(shape_and_problems, seed):
    """One graph solved, then in its residual graph (left in solver.graph) the terminal capacities
    changed to another's and every edge raised to the other's capacity or more: resume_max_flow
    finishes with the other graph's minimum cut."""
    shape, (first, second) = shape_and_problems[0], shape_and_problems[1][:2]
    height, width, n_directions = shape
    n = height * width
    rng = np.random.default_rng(seed)
    raised = [np.maximum(a, b) + rng.integers(0, 2, a.shape) for a, b in zip(first[2:], second[2:])]
    second = (*second[:2], *raised)
    solver = GridMaxflow(*shape)
    solver.solve(*first)
    graph = solver.graph
    cap, tr = graph[3], graph[4]
    tr += ((second[0] - second[1]) - (first[0] - first[1])).reshape(n)
    for d, (dy, dx) in enumerate(FORWARD_OFFSETS[:n_directions]):
        for y, x in np.ndindex(height, width):
            if 0 <= y + dy < height and 0 <= x + dx < width:
                p, q = y * width + x, (y + dy) * width + x + dx
                cap[d, p] += second[2][d, y, x] - first[2][d, y, x]
                cap[n_directions + d, q] += second[3][d, y, x] - first[3][d, y, x]
    resume_max_flow(graph)
    np.testing.assert_array_equal((graph[5] == SINK).reshape(height, width), scipy_sink_side(*second))


def test_known_small_graphs():
    # a single node: flow is min(source, sink); the node is on the sink side iff source is cut
    solver = GridMaxflow(1, 1, 2)
    zero_edges = np.zeros((2, 1, 1))
    assert solver.solve([[3.0]], [[5.0]], zero_edges, zero_edges) == 3.0
    assert solver.sink_side[0, 0]
    assert solver.solve([[5.0]], [[3.0]], zero_edges, zero_edges) == 3.0
    assert not solver.sink_side[0, 0]
    # a chain source -> (0,0) -> (0,1) -> (0,2) -> sink with bottleneck 2 in the middle
    solver = GridMaxflow(1, 3, 2)
    fwd = np.zeros((2, 1, 3))
    fwd[0, 0, :2] = [7.0, 2.0]
    assert solver.solve([[9.0, 0, 0]], [[0, 0, 9.0]], fwd, np.zeros_like(fwd)) == 2.0
    np.testing.assert_array_equal(solver.sink_side, [[False, False, True]])
    # all zero: no flow, and no node can reach the sink: every node on the source side
    solver = GridMaxflow(3, 2, 4)
    assert solver.solve(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((4, 3, 2)),
                        np.zeros((4, 3, 2))) == 0.0
    assert not solver.sink_side.any()


def test_bad_arguments():
    with pytest.raises(ValueError):
        GridMaxflow(3, 3, 3)
    with pytest.raises(ValueError):
        GridMaxflow(0, 3, 2)
    solver = GridMaxflow(3, 3, 2)
    with pytest.raises(ValueError):
        solver.solve(np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((4, 3, 3)), np.zeros((4, 3, 3)))
    ones = np.ones((3, 3))
    for bad in (-1.0, np.nan, np.inf):
        for which in range(4):
            problem = [ones.copy(), ones.copy(), np.ones((2, 3, 3)), np.ones((2, 3, 3))]
            problem[which][..., 1, 1] = bad  # an edge inside the image
            with pytest.raises(ValueError):
                solver.solve(*problem)
    assert solver.solve(ones, ones, np.ones((2, 3, 3)), np.ones((2, 3, 3))) == 9.0


def test_instances_run_in_parallel_threads():
    """The compiled solver releases the GIL; instances used from several threads stay correct."""
    rng = np.random.default_rng(7)
    height, width, n_directions = 60, 50, 4
    problems = [
        tuple(np.round(rng.random(shape) * 9) * (rng.random(shape) < 0.8)
              for shape in [(height, width)] * 2 + [(n_directions, height, width)] * 2)
        for _ in range(8)
    ]
    expected = [GridMaxflow(height, width, n_directions).solve(*p) for p in problems]

    def work(chunk):
        solver = GridMaxflow(height, width, n_directions)
        return [(solver.solve(*p), solver.sink_side.copy()) for p in chunk]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(work, [problems[0::2], problems[1::2]]))
    flows = [None] * len(problems)
    flows[0::2] = [f for f, _ in results[0]]
    flows[1::2] = [f for f, _ in results[1]]
    assert flows == expected
    for (flow, sink_side), problem in zip(results[0], problems[0::2]):
        check_cut(flow, problem, sink_side)


def test_alpha_expansion_like_grid_against_scipy():
    """A larger 4- and 8-connected grid with integer caps shaped like an expansion move."""
    rng = np.random.default_rng(123)
    height, width = 40, 37
    for n_directions in (2, 4):
        source_cap = np.round(-np.log(rng.dirichlet(np.ones(5), size=(height, width))[..., 0]) * 10)
        sink_cap = np.round(-np.log(rng.dirichlet(np.ones(5), size=(height, width))[..., 1]) * 10)
        fwd = np.round(np.exp(-rng.random((n_directions, height, width)) * 3) * 20)
        bwd = np.round(np.exp(-rng.random((n_directions, height, width)) * 3) * 20)
        problem = (source_cap, sink_cap, fwd, bwd)
        solver = GridMaxflow(height, width, n_directions)
        flow = solver.solve(*problem)
        assert flow == scipy_maxflow(*problem)
        check_cut(flow, problem, solver.sink_side)
