"""Backend ``numba-swap``: alpha-beta swap (Boykov, Veksler & Zabih 2001) on the package's Numba
grid max-flow. Each move lets the pixels labelled alpha or beta exchange those two labels; all
other pixels keep theirs. Sweeps over all pairs alpha < beta until no move lowers the energy."""

import itertools

import numpy as np
from numba import njit

from ..energies.gridcrf import OFFSETS
from . import check_cancelled
from ._gridflow import GridMaxflow
from .moves import improves, label_major_unary, move_labels

_OFFSETS = np.array(OFFSETS, dtype=np.int64)


@njit(nogil=True, cache=True)
def swap_capacities(unary, weights, labels, seeds, pinned, alpha, beta, source_cap, sink_cap, edge_cap):
    """Capacities of the alpha-beta swap move: among pixels labelled alpha or beta, y_p = 1 gives
    beta and y_p = 0 alpha; every other node is left without edges. Edges to pixels outside the swap
    set cost the same either way (Potts), so only edges inside it enter, with capacity w both ways.
    Seeded pixels are pinned to their seed. Returns the cut cost of the current labeling."""
    n_directions, height, width = weights.shape
    total = 0.0
    for y in range(height):
        for x in range(width):
            source_cap[y, x] = 0.0
            sink_cap[y, x] = 0.0
            label = labels[y, x]
            if label == alpha or label == beta:
                delta = unary[beta, y, x] - unary[alpha, y, x]
                source_cap[y, x] = max(delta, 0.0)
                sink_cap[y, x] = max(-delta, 0.0)
                total += abs(delta)
    current = 0.0
    for d in range(n_directions):
        dy, dx = _OFFSETS[d, 0], _OFFSETS[d, 1]
        for y in range(height):
            for x in range(width):
                edge_cap[d, y, x] = 0.0
                qy, qx = y + dy, x + dx
                if not (0 <= qy < height and 0 <= qx < width):
                    continue
                lp, lq = labels[y, x], labels[qy, qx]
                if (lp == alpha or lp == beta) and (lq == alpha or lq == beta):
                    edge_cap[d, y, x] = weights[d, y, x]
                    total += 2.0 * weights[d, y, x]
                    if lp != lq:
                        current += weights[d, y, x]
    total = 2.0 * total if total > 0.0 else 1.0  # more than every other capacity, at the energy's scale
    for y in range(height):
        for x in range(width):
            label = labels[y, x]
            if label == alpha or label == beta:
                if pinned[y, x]:
                    if seeds[y, x] == alpha:
                        source_cap[y, x] += total
                    else:
                        sink_cap[y, x] += total
                current += source_cap[y, x] if label == beta else sink_cap[y, x]
    return current


def minimize(problem, init, *, max_iter=None, labels=None):
    """Alpha-beta swap sweeps over all label pairs until no move lowers the energy or `max_iter`.

    Parameters
    ----------
    max_iter : int, optional
        Upper bound on the number of sweeps over all pairs (default: until convergence).
    labels : sequence of int, optional
        Swap only between these labels.
    """
    pairs = list(itertools.combinations(move_labels(problem, labels), 2))
    labels = init.copy()
    history = [problem.energy(labels)]
    unary = label_major_unary(problem)
    weights = problem.lam * problem.weights
    flow_solver = GridMaxflow(*problem.shape, weights.shape[0])
    source_cap, sink_cap = np.empty(problem.shape), np.empty(problem.shape)
    edge_cap = np.empty_like(weights)
    converged = not pairs
    while not converged and (max_iter is None or len(history) <= max_iter):
        converged = True
        for alpha, beta in pairs:
            check_cancelled()
            current = swap_capacities(unary, weights, labels, problem.seeds, problem.seeded, alpha, beta,
                                      source_cap, sink_cap, edge_cap)
            flow = flow_solver.solve(source_cap, sink_cap, edge_cap, edge_cap)
            if improves(flow, current, problem.energy_scale):
                in_swap = (labels == alpha) | (labels == beta)
                labels[in_swap] = np.where(flow_solver.sink_side[in_swap], beta, alpha)
                converged = False
        history.append(problem.energy(labels))
    return {"labels": labels, "history": history, "converged": converged}
