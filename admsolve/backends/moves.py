"""Graph construction shared by the graph-cut backends: the binary energy of one alpha-expansion
move (Boykov, Veksler & Zabih 2001) and of the exact two-label problem, as terminal and edge
capacities on the grid. Convention: a node on the sink side of the cut takes y = 1."""

import numpy as np

from ..gridcrf import edge_slices


def pair_weights(problem):
    """(D, H, W) array of lam * weights (zero for edges leaving the image)."""
    return problem.lam * problem.weights


def expansion_capacities(problem, scaled_weights, labels, alpha):
    """Capacities of the alpha-expansion move from `labels`: y_p = 1 moves p to `alpha`.

    Returns ``(source_cap, sink_cap, edge_cap, current_cost)``: (H, W) terminal capacities, the
    (D, H, W) capacities of the directed edges p -> p + OFFSETS[d] (the reverse edges have none), and
    the cost of y = 0 everywhere, so that the move's energy change is ``maxflow - current_cost``.
    Seeded pixels not labelled `alpha` are pinned to y = 0.
    """
    height, width = problem.shape
    unary = problem.unary
    delta = unary[..., alpha] - np.take_along_axis(unary, labels[..., None], axis=2)[..., 0]
    edge_cap = np.zeros_like(scaled_weights)
    not_alpha = labels != alpha
    for d in range(scaled_weights.shape[0]):
        p, q = edge_slices(d, height, width)
        w = scaled_weights[(d, *p)]
        cut_now = w * (labels[p] != labels[q])  # E(0, 0)
        p_moves_alone = w * not_alpha[q]  # E(1, 0): p is alpha, q keeps its label
        q_moves_alone = w * not_alpha[p]  # E(0, 1)
        delta[p] += p_moves_alone - cut_now
        delta[q] -= p_moves_alone
        edge_cap[(d, *p)] = q_moves_alone + p_moves_alone - cut_now
    source_cap = np.maximum(delta, 0.0)
    sink_cap = np.maximum(-delta, 0.0)
    pinned = problem.seeded & not_alpha
    if pinned.any():
        source_cap[pinned] += np.abs(delta).sum() + edge_cap.sum() + 1.0
    return source_cap, sink_cap, edge_cap, float(sink_cap.sum())


def binary_capacities(problem, scaled_weights):
    """Capacities of the exact two-label problem, y_p = label of p.

    Returns ``(source_cap, sink_cap, edge_cap)``; every edge has capacity ``edge_cap`` both ways.
    """
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

