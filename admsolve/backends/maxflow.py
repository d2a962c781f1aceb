"""Backend ``maxflow``: alpha-expansion with every move solved as a min-cut by PyMaxflow.

PyMaxflow's own ``fastmin`` takes no per-edge weights, so each move's graph is built here with one
vectorised ``add_grid_edges`` call per direction. Two labels are solved exactly by one min-cut.
"""

import maxflow as pymaxflow
import numpy as np

from ..gridcrf import OFFSETS
from .moves import binary_capacities, expansion_capacities, improves, pair_weights


def _structure(direction):
    dy, dx = OFFSETS[direction]
    structure = np.zeros((3, 3))
    structure[1 + dy, 1 + dx] = 1.0
    return structure


def _min_cut(source_cap, sink_cap, edge_cap, symmetric):
    """Max-flow value and the (H, W) bool map of sink-side nodes."""
    n_nodes = source_cap.size
    graph = pymaxflow.Graph[float](n_nodes, n_nodes * edge_cap.shape[0])
    nodes = graph.add_grid_nodes(source_cap.shape)
    for d in range(edge_cap.shape[0]):
        graph.add_grid_edges(nodes, weights=edge_cap[d], structure=_structure(d), symmetric=symmetric)
    graph.add_grid_tedges(nodes, source_cap, sink_cap)
    flow = graph.maxflow()
    return flow, graph.get_grid_segments(nodes)


def minimize(problem, init, *, max_sweeps=None):
    """Alpha-expansion: sweeps over the labels until no move lowers the energy or `max_sweeps`.

    Parameters
    ----------
    max_sweeps : int, optional
        Upper bound on the number of sweeps over all labels (default: until convergence).
    """
    weights = pair_weights(problem)
    labels = init.copy()
    history = [problem.energy(labels)]
    if problem.n_labels == 2:
        source_cap, sink_cap, edge_cap = binary_capacities(problem, weights)
        _, sink_side = _min_cut(source_cap, sink_cap, edge_cap, symmetric=True)
        labels = sink_side.astype(np.int32)
        history.append(problem.energy(labels))
        return {"labels": labels, "history": history, "converged": True}
    converged = problem.n_labels == 1
    while not converged and (max_sweeps is None or len(history) <= max_sweeps):
        converged = True
        for alpha in range(problem.n_labels):
            source_cap, sink_cap, edge_cap, current = expansion_capacities(problem, weights, labels, alpha)
            flow, sink_side = _min_cut(source_cap, sink_cap, edge_cap, symmetric=False)
            if improves(flow, current, history[-1]):
                labels[sink_side] = alpha
                converged = False
        history.append(problem.energy(labels))
    return {"labels": labels, "history": history, "converged": converged}
