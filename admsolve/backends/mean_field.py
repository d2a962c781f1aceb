"""Backend ``mean-field``: mean-field inference of the dense CRF (parallel updates, Krähenbühl &
Koltun 2011), as pydensecrf's ``DenseCRF.inference``, with seeds as hard constraints.

    Q_0 = softmax(-unary),    Q_{t+1} = softmax(-unary + sum_m compat_m K_m Q_t),

``K_m`` the symmetric-normalised lattice filter of kernel m (see :mod:`admsolve.energies.densecrf`); this is
pydensecrf's update with its ``PottsCompatibility(compat_m)``. Seeded pixels have Q fixed one-hot at
their seed from Q_0 on, so they send their label to their neighbours at every iteration. Labels
are ``argmax Q`` (seeds hold by construction).

On the CPU ("cpu", the default) each iteration is the lattice filters (``filter(..., out=)``) then
one fused update over blocks of pixels: per block, a Numba pass for the weighted sum of the messages
(minus its maximum), NumPy's SIMD exponential in place, and a Numba pass for the normalisation, the
seeds and the argmax. With ``device="cuda"`` the same algorithm runs entirely on CuPy arrays
(:func:`mean_field_xp`: the lattices are :class:`~admsolve.filters.array_lattice.ArrayLattice`, a sort-based
hash built from array operations); that path is tested on NumPy here and has not yet been run on a
GPU.

The starting labeling `init` given by :func:`~admsolve.solve` is used only for ``history[0]``:
mean-field starts from ``softmax(-unary)``, as pydensecrf does (it is not a warm start).
"""

import numpy as np
from numba import njit

from .._array import device_module, to_numpy
from .._validation import as_scalar
from ..energies.densecrf import NORMALIZATION
from ..filters.array_lattice import ArrayLattice


#: Pixels per block of the update: the block's logits stay in cache between its three passes.
_BLOCK = 4096


@njit(nogil=True, cache=True)
def _shifted_logits(neg_unary, messages, weights, start, stop, q):
    """q[p] = -unary[p] + sum_m weights[m] messages[m, p], minus its maximum, for p in [start, stop)."""
    n_labels = neg_unary.shape[1]
    n_kernels = messages.shape[0]
    for p in range(start, stop):
        top = -np.inf
        for l in range(n_labels):
            v = neg_unary[p, l]
            for m in range(n_kernels):
                v += weights[m] * messages[m, p, l]
            q[p, l] = v
            if v > top:
                top = v
        for l in range(n_labels):
            q[p, l] -= top


@njit(nogil=True, cache=True)
def _normalize(seeds, unlabeled, start, stop, q, labels):
    """Rows [start, stop) of q (exponentials) divided by their sums, one-hot at seeded pixels;
    labels[p] = argmax q[p] (first maximum). Returns how many labels changed."""
    n_labels = q.shape[1]
    changed = 0
    for p in range(start, stop):
        seed = seeds[p]
        if seed != unlabeled:
            for l in range(n_labels):
                q[p, l] = 0.0
            q[p, seed] = 1.0
            best = seed
        else:
            total = 0.0
            for l in range(n_labels):
                total += q[p, l]
            inv = 1.0 / total
            best = 0
            for l in range(n_labels):
                q[p, l] *= inv
                if q[p, l] > q[p, best]:
                    best = l
        if labels[p] != best:
            labels[p] = best
            changed += 1
    return changed


def _update(neg_unary, messages, weights, seeds, unlabeled, q, labels):
    """The fused update, block by block: q = softmax(-unary + sum_m weights[m] messages[m]) with the
    seeds one-hot, labels = argmax q; returns how many labels changed. The exponential is NumPy's
    (SIMD) on the block, between two Numba passes."""
    changed = 0
    for start in range(0, q.shape[0], _BLOCK):
        stop = min(start + _BLOCK, q.shape[0])
        _shifted_logits(neg_unary, messages, weights, start, stop, q)
        block = q[start:stop]
        np.exp(block, out=block)
        changed += _normalize(seeds, unlabeled, start, stop, q, labels)
    return changed


def _check_options(iterations, tol):
    iterations = as_scalar(iterations, "iterations", minimum=0, integer=True)
    if tol is not None:
        tol = as_scalar(tol, "tol", minimum=0.0)
    return iterations, tol


def _stop(changed, n_free, tol):
    """Whether the labeling stopped changing: at most a fraction `tol` of the free pixels changed."""
    return changed <= (0.0 if tol is None else tol) * n_free


def mean_field(problem, *, iterations=5, tol=None, callback=None):
    """Mean-field on the CPU (NumPy + fused Numba update).

    Parameters
    ----------
    problem : DenseCRF
    iterations : int, optional
        Maximum number of updates (>= 0).
    tol : float, optional
        Stop early once an update changes the label of at most this fraction of the free pixels
        (0: stop when the labeling no longer changes). None runs every iteration.
    callback : callable, optional
        ``callback(t, q, labels)`` after Q_0 (t = 0) and after each update, with q the (N, K) marginals
        and labels the (N,) argmax (views of the working arrays: copy them to keep them).

    Returns
    -------
    q : (H, W, K) ndarray, labels : (H, W) int32 ndarray, changed : list of int (labels changed by
    each update).
    """
    iterations, tol = _check_options(iterations, tol)
    height, width, n_labels = problem.unary.shape
    n = height * width
    neg_unary = np.ascontiguousarray(-problem.unary.reshape(n, n_labels))
    seeds = np.ascontiguousarray(problem.seeds.reshape(n))
    unlabeled = np.int32(problem.unlabeled)
    n_free = int(np.count_nonzero(seeds == unlabeled))
    q = np.empty((n, n_labels))
    labels = np.full(n, -1, dtype=np.int32)
    weights = np.array([compat for _, compat, _ in problem.kernels], dtype=np.float64)
    messages = np.empty((len(problem.kernels), n, n_labels))
    _update(neg_unary, messages[:0], weights[:0], seeds, unlabeled, q, labels)
    if callback is not None:
        callback(0, q, labels)
    changed = []
    for t in range(iterations):
        for m in range(len(problem.kernels)):
            problem.filter(q, m, out=messages[m])
        changed.append(_update(neg_unary, messages, weights, seeds, unlabeled, q, labels))
        if callback is not None:
            callback(t + 1, q, labels)
        if tol is not None and _stop(changed[-1], n_free, tol):
            break
    return q.reshape(height, width, n_labels), labels.reshape(height, width), changed


def mean_field_xp(problem, xp, *, iterations=5, tol=None, callback=None):
    """The same mean-field written for an array module `xp` (NumPy or CuPy), every step on `xp`: the
    lattices are :class:`~admsolve.filters.array_lattice.ArrayLattice` built on `xp` (bit-identical to the Numba
    lattice on NumPy). Same parameters and results as :func:`mean_field`, with q and labels arrays
    of `xp`."""
    iterations, tol = _check_options(iterations, tol)
    height, width, n_labels = problem.unary.shape
    n = height * width
    neg_unary = xp.asarray(-problem.unary.reshape(n, n_labels))
    seeds = xp.asarray(problem.seeds.reshape(n))
    seeded = seeds != problem.unlabeled
    seeded_rows = xp.nonzero(seeded)[0]
    seed_onehot = xp.zeros((int(seeded_rows.shape[0]), n_labels))
    seed_onehot[xp.arange(seed_onehot.shape[0]), seeds[seeded_rows]] = 1.0
    n_free = n - int(seeded_rows.shape[0])
    lattices = [(compat, ArrayLattice(xp.asarray(features))) for _, compat, features in problem.kernel_features()]

    def softmax(logits):
        logits = logits - logits.max(axis=1, keepdims=True)
        e = xp.exp(logits)
        q = e / e.sum(axis=1, keepdims=True)
        q[seeded_rows] = seed_onehot
        return q, q.argmax(axis=1).astype(xp.int32)

    q, labels = softmax(neg_unary)
    if callback is not None:
        callback(0, q, labels)
    changed = []
    for t in range(iterations):
        logits = neg_unary.copy()
        for compat, lattice in lattices:
            logits += compat * lattice.filter(q, normalization=NORMALIZATION)
        q, new_labels = softmax(logits)
        changed.append(int((new_labels != labels).sum()))
        labels = new_labels
        if callback is not None:
            callback(t + 1, q, labels)
        if tol is not None and _stop(changed[-1], n_free, tol):
            break
    return q.reshape(height, width, n_labels), labels.reshape(height, width), changed


def minimize(problem, init, *, max_iter=5, device=None, tol=None):
    """Mean-field inference of a DenseCRF.

    Parameters
    ----------
    max_iter : int, optional
        Number of mean-field updates (pydensecrf's ``inference(n_iterations)``), >= 0; None takes
        the default, 5.
    device : {"cpu", "cuda"}, optional
        Where to run: "cuda" runs everything on CuPy (not yet run on a GPU); by default where the
        problem's arrays came from (``problem.device``).
    tol : float, optional
        Stop early once an update changes the label of at most this fraction of the free pixels
        (0: once the labeling no longer changes). None (default) always runs `max_iter` updates.

    Returns
    -------
    dict with ``labels``, ``message``, ``history`` (``problem.energy(init)``, then the energy of the argmax after
    each update), ``converged`` (the last update changed at most a fraction `tol` of the free labels,
    none when `tol` is None; False when no update ran) and ``probs`` ((H, W, K) NumPy marginals Q).
    """
    iterations, tol = _check_options(5 if max_iter is None else max_iter, tol)
    xp = device_module(problem.device if device is None else device)
    history = [problem.energy(init)]

    def record(t, q, labels):
        if t > 0:
            history.append(problem.energy(to_numpy(labels).reshape(problem.shape)))

    if xp is np:
        q, labels, changed = mean_field(problem, iterations=iterations, tol=tol, callback=record)
    else:
        q, labels, changed = mean_field_xp(problem, xp, iterations=iterations, tol=tol, callback=record)
    n_free = int(np.count_nonzero(~problem.seeded))
    converged = bool(changed) and _stop(changed[-1], n_free, tol)
    message = (f"converged: the last update changed at most a fraction tol = {tol or 0:g} of the free labels"
               if converged else f"stopped: {iterations} updates (max_iter) run")
    return {"labels": to_numpy(labels).astype(np.int32), "history": history, "converged": converged,
            "message": message,
            "probs": np.asarray(to_numpy(q), dtype=np.float64)}
