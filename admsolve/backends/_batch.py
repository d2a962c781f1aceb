"""What the Numba backends share to solve a batch of grid CRFs of one shape in one compiled call per
thread (their ``minimize_batch``, which :func:`~admsolve.solve_batch` calls): the problems' arrays
stacked, and each problem's label-major unaries, scaled weights and seeded pixels loaded into buffers
reused from problem to problem."""

import numpy as np
from numba import njit


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
            stack([problem.seeds for problem in problems]), np.stack([np.asarray(init, dtype=np.int32) for init in inits]))


def iteration_caps(options):
    """Each problem's ``max_iter`` as an int64 array, -1 for none."""
    return np.array([-1 if entry.get("max_iter") is None else entry["max_iter"] for entry in options], dtype=np.int64)


def _read_only_stack(arrays):
    stacked_arrays = np.stack(arrays)
    stacked_arrays.flags.writeable = False
    return stacked_arrays


@njit(inline="always")
def load_problem(unaries, weights, lams, seeds, unlabeled, i, unary, scaled, pinned):
    """Problem `i` of the stacks into the buffers: `unary` (K, H, W) label-major, `scaled` (D, H, W) the
    weights times lambda, `pinned` (H, W) its seeded pixels."""
    n_labels, height, width = unary.shape
    for y in range(height):
        for x in range(width):
            pinned[y, x] = seeds[i, y, x] != unlabeled
            for label in range(n_labels):
                unary[label, y, x] = unaries[i, y, x, label]
    for d in range(scaled.shape[0]):
        for y in range(height):
            for x in range(width):
                scaled[d, y, x] = lams[i] * weights[i, d, y, x]
