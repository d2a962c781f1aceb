"""Backend ``numba-expansion``: alpha-expansion on the package's own Numba grid max-flow
(Boykov-Kolmogorov, ``_gridflow``), with every buffer allocated once per problem and the GIL
released while solving. Same moves and semantics as ``maxflow``, no GPL dependency.

Each label keeps the residual graph of its last move, and its next move starts from that flow
(only what the label changes since then alter is updated): after the first sweep little is left
to push. This costs (2 D + 1) * 8 + 4 bytes per pixel and label moved to, D = 2 or 4 directions:
about 95 MB at 321 x 321 with 21 labels and 4-connectivity, 420 MB at 513 x 513 with 8."""

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

    def min_cut(source_cap, sink_cap, edge_cap, symmetric):
        bwd_cap = edge_cap if symmetric else np.zeros_like(edge_cap)
        return flow_solver.solve(source_cap, sink_cap, edge_cap, bwd_cap), flow_solver.sink_side

    # the moves are built and solved in place in the max-flow's arrays; min_cut serves the K = 2 cut
    return alpha_expansion(problem, init, max_iter, min_cut, labels, flow_solver=flow_solver)
