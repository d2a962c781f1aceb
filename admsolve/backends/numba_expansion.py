"""Backend ``numba-expansion``: alpha-expansion on the package's own Numba grid max-flow
(Boykov-Kolmogorov, ``_gridflow``), with every buffer allocated once per problem and the GIL
released while solving. Same moves and semantics as ``maxflow``, no GPL dependency."""

import numpy as np

from ._gridflow import GridMaxflow
from .moves import alpha_expansion


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
    flow_solver = GridMaxflow(*problem.shape, problem.weights.shape[0])
    no_capacity = np.zeros_like(problem.weights)

    def min_cut(source_cap, sink_cap, edge_cap, symmetric):
        flow = flow_solver.solve(source_cap, sink_cap, edge_cap, edge_cap if symmetric else no_capacity)
        return flow, flow_solver.sink_side

    return alpha_expansion(problem, init, max_iter, min_cut, labels)
