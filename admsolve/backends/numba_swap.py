"""Backend ``numba-swap``: alpha-beta swap (Boykov, Veksler & Zabih 2001) on the package's Numba
grid max-flow. Each move lets the pixels labelled alpha or beta exchange those two labels; all
other pixels keep theirs. Sweeps over all pairs alpha < beta until no move lowers the energy."""

import itertools

import numpy as np
from numba import njit

from ..energies.gridcrf import OFFSETS
from . import CANCEL, check_cancelled
from ._gridflow import GridMaxflow, load_and_solve
from .moves import grid_energy, improves, label_major_unary, move_labels

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


@njit(nogil=True, cache=True)
def swap_sweeps(unary, weights, labels, seeds, pinned, pairs, max_iter, energy_scale, source_cap, sink_cap, edge_cap,
                source_flat, sink_flat, edge_flat, fwd_dy, fwd_dx, graph, sink_side, cancel):
    """Alpha-beta swap sweeps over the label `pairs` (P, 2) in one compiled call, modifying `labels` in
    place, until a sweep moves nothing or `max_iter` sweeps (< 0: no bound); ``cancel[0]`` is read before
    each move. `unary` is label-major (K, H, W), `weights` scaled by lam; the capacity arrays are the
    (H, W) and (D, H, W) buffers with flat views of them (``*_flat``), `graph` and `sink_side` (flat) a
    GridMaxflow's. Returns (history, converged, cancelled): the energy (grid_energy) before the first
    sweep and after each."""
    width = weights.shape[2]
    history = [grid_energy(unary, weights, labels)]
    converged = pairs.shape[0] == 0
    while not converged and (max_iter < 0 or len(history) <= max_iter):
        converged = True
        for i in range(pairs.shape[0]):
            if cancel[0]:
                return np.array(history), False, True
            alpha, beta = pairs[i, 0], pairs[i, 1]
            current = swap_capacities(unary, weights, labels, seeds, pinned, alpha, beta, source_cap, sink_cap,
                                      edge_cap)
            flow, valid = load_and_solve(source_flat, sink_flat, edge_flat, edge_flat, fwd_dy, fwd_dx, width, graph,
                                         sink_side)
            if not valid:
                raise ValueError("capacities must be finite and >= 0")
            if improves(flow, current, energy_scale):
                for y in range(labels.shape[0]):
                    for x in range(width):
                        label = labels[y, x]
                        if label == alpha or label == beta:
                            labels[y, x] = beta if sink_side[y * width + x] else alpha
                converged = False
        history.append(grid_energy(unary, weights, labels))
    return np.array(history), converged, False


def minimize(problem, init, *, max_iter=None, labels=None):
    """Alpha-beta swap sweeps over all label pairs until no move lowers the energy or `max_iter`, all in
    one compiled call.

    Parameters
    ----------
    max_iter : int, optional
        Upper bound on the number of sweeps over all pairs (default: until convergence).
    labels : sequence of int, optional
        Swap only between these labels.
    """
    pairs = np.array(list(itertools.combinations(move_labels(problem, labels), 2)), dtype=np.int64).reshape(-1, 2)
    labels = init.copy()
    weights = problem.lam * problem.weights
    flow_solver = GridMaxflow(*problem.shape, weights.shape[0])
    n = problem.shape[0] * problem.shape[1]
    source_cap, sink_cap = np.empty(problem.shape), np.empty(problem.shape)
    edge_cap = np.empty_like(weights)
    history, converged, cancelled = swap_sweeps(
        label_major_unary(problem), weights, labels, problem.seeds, problem.seeded, pairs,
        -1 if max_iter is None else max_iter, problem.energy_scale, source_cap, sink_cap, edge_cap,
        source_cap.reshape(n), sink_cap.reshape(n), edge_cap.reshape(weights.shape[0], n), flow_solver.fwd_dy,
        flow_solver.fwd_dx, flow_solver.graph, flow_solver.sink_side.reshape(n), CANCEL.array)
    if cancelled:
        check_cancelled()
    return {"labels": labels, "history": list(history), "converged": converged}
