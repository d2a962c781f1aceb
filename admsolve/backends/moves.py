"""Graph construction shared by the graph-cut backends: the binary energy of one alpha-expansion
move (Boykov, Veksler & Zabih 2001) and of the exact two-label problem, as terminal and edge
capacities on the grid. Convention: a node on the sink side of the cut takes y = 1."""

import numpy as np
from numba import njit

from ..gridcrf import OFFSETS

_OFFSETS = np.array(OFFSETS, dtype=np.int64)


def label_major_unary(problem):
    """The unaries as a contiguous (K, H, W) array, so each label's costs are one block."""
    return np.ascontiguousarray(np.moveaxis(problem.unary, 2, 0))


@njit(nogil=True, cache=True)
def expansion_capacities(unary, weights, labels, pinned, alpha, source_cap, sink_cap, edge_cap):
    """Capacities of the alpha-expansion move from `labels`: y_p = 1 moves p to `alpha`.

    unary : (K, H, W); weights : (D, H, W), already multiplied by lambda; pinned : (H, W) bool, the
    seeded pixels (pinned to y = 0 unless already `alpha`). Writes the (H, W) terminal capacities
    and the (D, H, W) capacities of the directed edges p -> p + OFFSETS[d] (the reverse edges have
    none), and returns the cost of y = 0 everywhere: the move's energy change is maxflow - that.
    Edge p -> q decomposes E(y_p, y_q) with E(0,0) = w[l_p != l_q], E(0,1) = w[l_p != alpha],
    E(1,0) = w[l_q != alpha], E(1,1) = 0 (Kolmogorov & Zabih 2004).
    """
    n_directions, height, width = weights.shape
    delta = source_cap  # cost(y = 1) - cost(y = 0), accumulated in place
    for y in range(height):
        for x in range(width):
            delta[y, x] = unary[alpha, y, x] - unary[labels[y, x], y, x]
    for d in range(n_directions):
        dy, dx = _OFFSETS[d, 0], _OFFSETS[d, 1]
        for y in range(height - dy):
            for x in range(max(0, -dx), min(width, width - dx)):
                w = weights[d, y, x]
                lp, lq = labels[y, x], labels[y + dy, x + dx]
                cut_now = w if lp != lq else 0.0
                p_moves_alone = w if lq != alpha else 0.0
                q_moves_alone = w if lp != alpha else 0.0
                delta[y, x] += p_moves_alone - cut_now
                delta[y + dy, x + dx] -= p_moves_alone
                edge_cap[d, y, x] = q_moves_alone + p_moves_alone - cut_now
    total = 1.0
    current_cost = 0.0
    for y in range(height):
        for x in range(width):
            value = delta[y, x]
            total += abs(value)
            sink_cap[y, x] = max(-value, 0.0)
            source_cap[y, x] = max(value, 0.0)
            current_cost += sink_cap[y, x]
    for d in range(n_directions):
        for y in range(height):
            for x in range(width):
                total += edge_cap[d, y, x]
    for y in range(height):
        for x in range(width):
            if pinned[y, x] and labels[y, x] != alpha:
                source_cap[y, x] += total
    return current_cost


def binary_capacities(problem):
    """Capacities of the exact two-label problem, y_p = label of p.

    Returns ``(source_cap, sink_cap, edge_cap)``; every edge has capacity ``edge_cap`` both ways.
    """
    scaled_weights = problem.lam * problem.weights
    delta = problem.unary[..., 1] - problem.unary[..., 0]
    source_cap = np.maximum(delta, 0.0)
    sink_cap = np.maximum(-delta, 0.0)
    big = np.abs(delta).sum() + 2.0 * scaled_weights.sum() + 1.0
    source_cap[problem.seeds == 0] += big
    sink_cap[problem.seeds == 1] += big
    return source_cap, sink_cap, scaled_weights


def improves(flow, current_cost, energy_scale):
    """True if a move whose cut costs `flow` strictly lowers the energy (beyond rounding)."""
    return flow < current_cost - 1e-10 * max(abs(energy_scale), 1.0)


def alpha_expansion(problem, init, max_sweeps, min_cut):
    """Alpha-expansion over all labels in order 0..K-1, sweeping until no move lowers the energy or
    `max_sweeps`; two labels are solved exactly by one min-cut instead.

    `min_cut(source_cap, sink_cap, edge_cap, symmetric)` returns the max-flow value and the (H, W)
    bool map of sink-side nodes; `edge_cap` is (D, H, W), and with ``symmetric=False`` the reverse
    edges have no capacity. Returns the backend result dict.
    """
    labels = init.copy()
    history = [problem.energy(labels)]
    if problem.n_labels == 2:
        _, sink_side = min_cut(*binary_capacities(problem), symmetric=True)
        labels = sink_side.astype(np.int32)
        history.append(problem.energy(labels))
        return {"labels": labels, "history": history, "converged": True}
    unary = label_major_unary(problem)
    weights = problem.lam * problem.weights
    pinned = problem.seeded
    source_cap, sink_cap = np.empty(problem.shape), np.empty(problem.shape)
    edge_cap = np.empty_like(weights)
    converged = problem.n_labels == 1
    while not converged and (max_sweeps is None or len(history) <= max_sweeps):
        converged = True
        for alpha in range(problem.n_labels):
            current = expansion_capacities(unary, weights, labels, pinned, alpha, source_cap, sink_cap, edge_cap)
            flow, sink_side = min_cut(source_cap, sink_cap, edge_cap, symmetric=False)
            if improves(flow, current, history[-1]):
                labels[sink_side] = alpha
                converged = False
        history.append(problem.energy(labels))
    return {"labels": labels, "history": history, "converged": converged}
