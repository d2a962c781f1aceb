"""Backend ``numba-expansion``: alpha-expansion on the package's own Numba grid max-flow
(Boykov-Kolmogorov, ``_gridflow``), a problem's sweeps in one compiled call with the GIL released
(:mod:`.expansion_batch`). Same moves and semantics as ``maxflow``, no GPL dependency. ``solve_batch``
solves a batch of one shape in one compiled call per thread (:func:`minimize_batch`).

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
from .expansion_batch import residual_graph_bytes, solve_grid_batch
from .moves import move_labels

#: The layouts of the ``memory`` option.
MEMORY_LAYOUTS = ("auto", "fast", "lean")
#: The share of the available memory that "auto" lets the fast layout's residual graphs take (a share, not
#: all of it: solve_batch runs one problem per worker thread at once).
AUTO_SHARE = 0.25


def residual_bytes(shape, n_directions, n_moved):
    """Bytes the fast layout keeps beyond the lean one: a residual graph ((2 D + 1) float64 per pixel)
    and a labeling (int32) per label moved to."""
    return int(residual_graph_bytes(int(np.prod(shape)), n_directions, n_moved))


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
    return minimize_batch([problem], [init], [dict(max_iter=max_iter, labels=labels, memory=memory)])[0]


def checked_options(problem, options):
    """(memory layout, labels moved to as a (K,) bool mask) from `problem`'s `options`, checked."""
    memory = options.get("memory", "auto")
    if memory not in MEMORY_LAYOUTS:
        raise ValueError(f"memory: expected one of {', '.join(map(repr, MEMORY_LAYOUTS))}, got {memory!r}")
    moves_to = np.zeros(problem.n_labels, bool)
    moves_to[move_labels(problem, options.get("labels"))] = True
    return memory, moves_to


def batchable(problems, options):
    """Whether :func:`minimize_batch` takes `problems` together: of one grid (:func:`same_grid`), with one
    memory layout among their `options`."""
    return same_grid(problems) and len({entry.get("memory", "auto") for entry in options}) == 1


def minimize_batch(problems, inits, options):
    """:func:`minimize` for each of `problems` (:func:`batchable`), with its `inits` entry and its dict of
    `options`, all in one compiled call (:func:`~.expansion_batch.solve_grid_batch`: no return to Python
    between problems, the residual graphs' buffers reused): the list of their outcomes."""
    memory, moves_to = zip(*(checked_options(problem, entry) for problem, entry in zip(problems, options)))
    memory, moves_to = memory[0], np.stack(moves_to)
    n_directions, n_labels = problems[0].weights.shape[0], problems[0].n_labels
    needed = [residual_bytes(problem.shape, n_directions, int(row.sum())) for problem, row in zip(problems, moves_to)]
    budget, available = fast_budget(memory, max(needed))
    unaries, weights, lams, energy_scales, seeds, labels = stacked(problems, inits)
    histories, converged, lean, cancelled = solve_grid_batch(
        np.arange(len(problems)), unaries, weights, lams, energy_scales, seeds, problems[0].unlabeled, labels,
        moves_to, iteration_caps(options), budget, True if n_labels == 2 else None, CANCEL.array)
    if cancelled:
        check_cancelled()
    outcomes = []
    for i, history in enumerate(histories):
        outcome = {"labels": labels[i], "history": history.tolist(), "converged": bool(converged[i]),
                   "memory": "lean" if lean[i] else "fast"}
        if memory == "auto" and lean[i]:
            outcome["note"] = lean_note(needed[i], available)
        outcomes.append(outcome)
    return outcomes


def fast_budget(memory, largest):
    """(the compiled solve's `fast_budget`, the bytes available or None) for the layout option `memory`, when
    the problems' fast layouts need at most `largest` bytes: None where every one of them takes the fast
    layout (Numba then compiles the solve without the lean one)."""
    available = available_memory() if memory == "auto" else None
    budget = {"fast": np.inf, "lean": -1.0}.get(memory, AUTO_SHARE * (available or 0))
    return (None if largest <= budget else budget), available


def lean_note(needed, available):
    """The result's note when "auto" chose the lean layout."""
    return (f"memory='auto' chose the lean layout: the fast one's residual graphs need {needed / 2**30:.2f} GiB, "
            f"more than {AUTO_SHARE:.0%} of the {available / 2**30:.2f} GiB available")


def same_grid(problems):
    """Whether `problems` have one shape, number of labels, connectivity and ``unlabeled`` value."""
    first = problems[0]
    return all(problem.unary.shape == first.unary.shape and problem.weights.shape == first.weights.shape
               and problem.unlabeled == first.unlabeled for problem in problems)


def stacked(problems, inits):
    """The arrays of `problems` (:func:`same_grid`) for a batch entry: (unaries (N, H, W, K), weights
    (N, D, H, W), lams (N,), energy_scales (N,), seeds (N, H, W), labels (N, H, W) int32 from `inits`).
    The problems' arrays are read-only and so are their stacks (one type to Numba: a single problem's are
    its own arrays, viewed)."""
    stack = (lambda arrays: arrays[0][None]) if len(problems) == 1 else _read_only_stack
    return (stack([problem.unary for problem in problems]), stack([problem.weights for problem in problems]),
            np.array([problem.lam for problem in problems]), np.array([problem.energy_scale for problem in problems]),
            stack([problem.seeds for problem in problems]),
            np.stack([np.asarray(init, dtype=np.int32) for init in inits]))


def iteration_caps(options):
    """Each problem's ``max_iter`` as an int64 array, -1 for none."""
    return np.array([-1 if entry.get("max_iter") is None else entry["max_iter"] for entry in options], dtype=np.int64)


def _read_only_stack(arrays):
    stacked_arrays = np.stack(arrays)
    stacked_arrays.flags.writeable = False
    return stacked_arrays
