"""Backend ``maxflow``: alpha-expansion with every move solved as a min-cut by PyMaxflow.

PyMaxflow's own ``fastmin`` takes no per-edge weights, so each move's graph is built here from
edge lists with one vectorised ``add_edges`` call. Two labels are solved exactly by one min-cut.
"""

import maxflow as pymaxflow
import numpy as np

from ..energies.gridcrf import edge_slices
from .moves import alpha_expansion


class _GridEdges:
    """Tail and head node ids of every edge inside an (H, W) grid with D directions, in the order of
    ``caps[inside]`` for a (D, H, W) capacity array."""

    def __init__(self, n_directions, height, width):
        node = np.arange(height * width).reshape(height, width)
        self.inside = np.zeros((n_directions, height, width), dtype=bool)
        tails, heads = [], []
        for d in range(n_directions):
            p, q = edge_slices(d, height, width)
            self.inside[(d, *p)] = True
            tails.append(node[p].ravel())
            heads.append(node[q].ravel())
        self.tails, self.heads = np.concatenate(tails), np.concatenate(heads)
        self.no_capacity = np.zeros(self.tails.size)
        self.nodes = node.ravel()

    def min_cut(self, source_cap, sink_cap, edge_cap, symmetric):
        """Max-flow value and the (H, W) bool map of sink-side nodes."""
        caps = edge_cap[self.inside]
        graph = pymaxflow.Graph[float](source_cap.size, caps.size)
        graph.add_nodes(source_cap.size)
        graph.add_edges(self.tails, self.heads, caps, caps if symmetric else self.no_capacity)
        graph.add_grid_tedges(self.nodes, source_cap.ravel(), sink_cap.ravel())
        flow = graph.maxflow()
        sink_side = graph.get_grid_segments(self.nodes)
        return flow, sink_side.reshape(source_cap.shape)


def minimize(problem, init, *, max_iter=None, labels=None):
    """Alpha-expansion: sweeps over the labels until no move lowers the energy or `max_iter`.

    Parameters
    ----------
    max_iter : int, optional
        Upper bound on the number of sweeps over all labels (default: until convergence).
    labels : sequence of int, optional
        Expand only on these labels (e.g. in ADM, the labels of the image's scribbles and those the
        network predicts); pixels may still keep other labels from `init`.
    """
    return alpha_expansion(problem, init, max_iter, _GridEdges(*problem.weights.shape).min_cut, labels)
