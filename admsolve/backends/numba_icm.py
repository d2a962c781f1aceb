"""Backend ``numba-icm``: iterated conditional modes (Besag 1986), JIT-compiled, GIL released.

Each sweep visits the free pixels in raster order and gives each the label that minimises its unary
plus its Potts cost against the current neighbours, changing it only on a decrease larger than
rounding (1e-12 relative to the pixel's cost and edge weights, with no absolute floor, so that any
scale of the energy gives the same sweeps): the energy never rises, the sweeps terminate, and the
result is a local minimum for single-pixel changes.
"""

import numpy as np
from numba import njit

from ..energies.gridcrf import OFFSETS
from . import CANCEL, check_cancelled
from .moves import grid_energy, label_major_unary

_OFFSETS = np.array(OFFSETS, dtype=np.int64)


@njit(nogil=True, cache=True)
def _icm_sweep(unary, weights, lam, free, labels):
    """One raster sweep; returns the number of pixels that changed label."""
    height, width, n_labels = unary.shape
    n_directions = weights.shape[0]
    cost = np.empty(n_labels)
    changed = 0
    for y in range(height):
        for x in range(width):
            if not free[y, x]:
                continue
            # cost[k] = unary + (weight of all edges at p) - (weight of the edges to neighbours labelled k)
            for k in range(n_labels):
                cost[k] = unary[y, x, k]
            incident = 0.0
            for d in range(n_directions):
                dy, dx = _OFFSETS[d, 0], _OFFSETS[d, 1]
                qy, qx = y + dy, x + dx  # forward neighbour: the edge weights[d, y, x]
                if 0 <= qy < height and 0 <= qx < width:
                    w = lam * weights[d, y, x]
                    incident += w
                    cost[labels[qy, qx]] -= w
                qy, qx = y - dy, x - dx  # backward neighbour: the edge weights[d, y - dy, x - dx]
                if 0 <= qy < height and 0 <= qx < width:
                    w = lam * weights[d, qy, qx]
                    incident += w
                    cost[labels[qy, qx]] -= w
            for k in range(n_labels):
                cost[k] += incident
            current = labels[y, x]
            best = current
            for k in range(n_labels):
                if cost[k] < cost[best] - 1e-12 * (abs(cost[best]) + incident):
                    best = k
            if best != current:
                labels[y, x] = best
                changed += 1
    return changed


@njit(nogil=True, cache=True)
def icm_sweeps(unary, weights, lam, free, labels, max_iter, label_major, scaled, cancel):
    """ICM sweeps in one compiled call, modifying `labels` in place, until a sweep changes nothing or
    `max_iter` sweeps (< 0: no bound); ``cancel[0]`` is read before each sweep. `label_major` and
    `scaled` are the unaries (K, H, W) and lam * weights of :func:`~admsolve.backends.moves.grid_energy`.
    Returns (history, converged, cancelled): the energy before the first sweep and after each."""
    history = [grid_energy(label_major, scaled, labels)]
    converged = False
    while not converged and (max_iter < 0 or len(history) <= max_iter):
        if cancel[0]:
            return np.array(history), False, True
        converged = _icm_sweep(unary, weights, lam, free, labels) == 0
        history.append(grid_energy(label_major, scaled, labels))
    return np.array(history), converged, False


def minimize(problem, init, *, max_iter=None):
    """ICM sweeps until a sweep changes no pixel or `max_iter`, all in one compiled call.

    Parameters
    ----------
    max_iter : int, optional
        Upper bound on the number of sweeps (default: until convergence).
    """
    labels = init.copy()
    history, converged, cancelled = icm_sweeps(problem.unary, problem.weights, problem.lam, ~problem.seeded, labels,
                                               -1 if max_iter is None else max_iter, label_major_unary(problem),
                                               problem.lam * problem.weights, CANCEL.array)
    if cancelled:
        check_cancelled()
    return {"labels": labels, "history": list(history), "converged": converged}
