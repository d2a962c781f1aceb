"""Backend ``numba-expansion``: alpha-expansion on the package's own Numba grid max-flow
(Boykov-Kolmogorov, ``_gridflow``), with every buffer allocated once per problem and the GIL
released while solving. Same moves and semantics as ``maxflow``, no GPL dependency.

Two memory layouts give the same moves, labels and energies:

- "fast": each label keeps the residual graph of its last move, and its next move starts from that
  flow (only what the label changes since then alter is updated): after the first sweep little is left
  to push. This costs :func:`residual_bytes`, (2 D + 1) * 8 + 4 bytes per pixel and label moved to
  (D = 2 or 4 directions): about 95 MB at 321 x 321 with 21 labels and 4-connectivity, 420 MB at
  513 x 513 with 8, 1.7 GB at 1024 x 1024 with 8.
- "lean": one working graph, and per label the labels of its last move and only the entries where
  that move's flow left its graph different from the fresh one (16 bytes each; on GrabCut with 21 labels
  about 0.7 per pixel and label, where a whole graph has 2 D + 1), rebuilt exactly before its next move;
  at most ``moves.LEAN_BUDGET`` whole graphs' worth of entries in all (a label that does not fit
  starts its next move afresh, as gco does every move).

"auto" (the default) takes "fast" unless its residual graphs would exceed :data:`AUTO_SHARE` of the
memory available (:func:`available_memory`), and says so in the result's message when it does not.
"""

import os

import numpy as np

from . import CANCEL, check_cancelled
from ._gridflow import GridMaxflow
from .moves import expansion_sweeps, label_major_unary, move_labels, pin_capacity, two_label_cut

#: The layouts of the ``memory`` option.
MEMORY_LAYOUTS = ("auto", "fast", "lean")
#: The share of the available memory that "auto" lets the fast layout's residual graphs take (a share, not
#: all of it: solve_batch runs one problem per worker thread at once).
AUTO_SHARE = 0.25


def residual_bytes(shape, n_directions, n_moved):
    """Bytes the fast layout keeps beyond the lean one: a residual graph ((2 D + 1) float64 per pixel)
    and a labeling (int32) per label moved to."""
    return int(np.prod(shape)) * n_moved * ((2 * n_directions + 1) * 8 + 4)


def available_memory():
    """Bytes of memory available to this process now: the kernel's MemAvailable where there is a
    /proc/meminfo, else the free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def minimize(problem, init, *, max_iter=None, labels=None, memory="auto"):
    """Alpha-expansion: sweeps over the labels until no move lowers the energy or `max_iter`.

    Parameters
    ----------
    max_iter : int, optional
        Upper bound on the number of sweeps over all labels (default: until convergence).
    labels : sequence of int, optional
        Expand only on these labels (e.g. in ADM, the labels of the image's scribbles and those the
        network predicts); pixels may still keep other labels from `init`.
    memory : {"auto", "fast", "lean"}, optional
        The memory layout (see the module's docstring): "fast" keeps a residual graph per label,
        "lean" only what each label's flow changed; "auto" takes "fast" unless its graphs would need more than
        AUTO_SHARE of the available memory. The result's ``memory`` says which ran.
    """
    if memory not in MEMORY_LAYOUTS:
        raise ValueError(f"memory: expected one of {', '.join(map(repr, MEMORY_LAYOUTS))}, got {memory!r}")
    n_directions = problem.weights.shape[0]
    flow_solver = GridMaxflow(*problem.shape, n_directions)
    note = None
    if memory == "auto":
        needed, available = residual_bytes(problem.shape, n_directions, len(move_labels(problem, labels))), \
            available_memory()
        memory = "fast" if needed <= AUTO_SHARE * available else "lean"
        if memory == "lean":
            note = (f"memory='auto' chose the lean layout: the fast one's residual graphs need "
                    f"{needed / 2**30:.2f} GiB, more than {AUTO_SHARE:.0%} of the {available / 2**30:.2f} GiB available")

    alphas = move_labels(problem, labels)
    labels = init.copy()
    if problem.n_labels == 2 and len(alphas) == 2:
        def min_cut(source_cap, sink_cap, edge_cap, symmetric):
            return flow_solver.solve(source_cap, sink_cap, edge_cap, edge_cap), flow_solver.sink_side

        outcome = two_label_cut(problem, min_cut, [problem.energy(labels)])
    else:
        # the moves are built and solved in place in the max-flow's arrays, all sweeps in one compiled call
        rows, n = flow_solver.graph[3].shape
        count = 0 if memory == "lean" else len(alphas)  # lean: none kept whole, one scratch graph
        caps, trs = np.empty((count, rows, n)), np.empty((count, n))  # (a label's first move writes its graph)
        scratch = (np.zeros((rows, n)), np.zeros(n), np.empty(n, np.int64), np.empty(n)) if memory == "lean" \
            else None  # (lean: a scratch graph, and room for one pixel's worth of changed entries per move)
        snapshots = np.empty((len(alphas), *problem.shape), dtype=labels.dtype)
        unary = label_major_unary(problem)
        history, converged, cancelled = expansion_sweeps(
            unary, problem.lam * problem.weights, labels, problem.seeded, pin_capacity(problem, unary),
            np.array(alphas if problem.n_labels > 1 else [], dtype=np.int64), -1 if max_iter is None else max_iter, problem.energy_scale,
            flow_solver.graph, caps, trs, snapshots, scratch, CANCEL.array)
        if cancelled:
            check_cancelled()
        outcome = {"labels": labels, "history": list(history), "converged": converged}
    outcome["memory"] = memory
    if note is not None:
        outcome["note"] = note
    return outcome
