"""Backend ``mean-field``: mean-field inference of the dense CRF (parallel updates, Krähenbühl &
Koltun 2011), as pydensecrf's ``DenseCRF.inference``, with seeds as hard constraints.

    Q_0 = softmax(-unary),    Q_{t+1} = softmax(-unary + sum_m compat_m K_m Q_t),

``K_m`` the symmetric-normalised lattice filter of kernel m (see :mod:`admsolve.energies.densecrf`); this is
pydensecrf's update with its ``PottsCompatibility(compat_m)``. Seeded pixels have Q fixed one-hot at
their seed from Q_0 on, so they send their label to their neighbours at every iteration. Labels
are ``argmax Q`` (seeds hold by construction).

On the CPU ("cpu", the default) each iteration is one fused pass (:func:`mean_field`): the small
lattice values of every kernel are blurred, then, block by block of pixels, a Numba pass slices the
messages of all kernels (weighted and normalised) into the logits, NumPy's SIMD exponential runs in
place, and a second Numba pass normalises, sets the seeds and the argmax and splats the new marginals
into the next iteration's lattice values. The messages are never stored. ``dtype="float32"`` (the
default, pydensecrf's precision) runs the lattice values and logits in float32; ``"float64"`` is the
reference. With ``device="cuda"`` the same algorithm runs entirely on CuPy arrays
(:func:`mean_field_xp`, float64: the lattices are :class:`~admsolve.filters.array_lattice.ArrayLattice`,
a sort-based hash built from array operations); that path is tested on NumPy here and has not yet
been run on a GPU.

By default (``history="ends"``) only the reference energies of `init` and of the result are
computed; ``history="all"`` adds one after every update.

The starting labeling `init` given by :func:`~admsolve.solve` is used only for ``history[0]``:
mean-field starts from ``softmax(-unary)``, as pydensecrf does (it is not a warm start).
"""

import numpy as np
from numba import njit

from .._array import device_module, to_numpy
from .._validation import as_scalar
from ..energies.densecrf import NORMALIZATION
from ..filters.array_lattice import ArrayLattice


#: Pixels per block of an iteration: the block's logits stay in cache between its three passes.
_BLOCK = 4096

#: The accepted values of ``dtype``: the precision of the messages, lattice values and marginals.
DTYPES = ("float32", "float64")


@njit(nogil=True, cache=True)
def _blur(neighbours, current, scratch, half, factor):
    """`factor` times the lattice blur B of the rows [0, M) of `current` (directions 0..d, taps 1/2, 1,
    1/2; row M is the zero of every missing neighbour), the result left in `current`; `half` and
    `factor` are in the dtype of the values."""
    dp1, m = neighbours.shape[0], neighbours.shape[1]
    n_channels = current.shape[1]
    for k in range(n_channels):  # the zero row of missing neighbours (scratch is shared by the kernels)
        scratch[m, k] = 0.0
    source, target = current, scratch
    for j in range(dp1):
        for index in range(m):
            a = neighbours[j, index, 0]
            b = neighbours[j, index, 1]
            for k in range(n_channels):
                target[index, k] = source[index, k] + half * (source[a, k] + source[b, k])
        source, target = target, source
    for index in range(m):  # the result is in source: current when d + 1 is even, else scratch
        for k in range(n_channels):
            current[index, k] = factor * source[index, k]


@njit(nogil=True, cache=True)
def _logits(token, neg_unary, vertices, weights, values, use_values, start, stop, block):
    """block[p - start] = -unary[p] + sum_r weights[p, r] values[vertices[p, r]] (the messages of every
    kernel, weighted and normalised: the slice), minus its maximum, for p in [start, stop). The number
    of labels is ``token.ndim`` when that is not 0 (see :func:`_label_token`)."""
    n_labels = token.ndim if token.ndim > 0 else neg_unary.shape[1]
    n_vertices = vertices.shape[1]
    for p in range(start, stop):
        i = p - start
        for k in range(n_labels):
            block[i, k] = neg_unary[p, k]
        if use_values:
            for r in range(n_vertices):
                v = vertices[p, r]
                w = weights[p, r]
                for k in range(n_labels):
                    block[i, k] += w * values[v, k]
        top = block[i, 0]
        for k in range(1, n_labels):
            top = max(top, block[i, k])
        for k in range(n_labels):
            block[i, k] -= top


@njit(nogil=True, cache=True)
def _normalize_splat(token, block, seeds, unlabeled, start, stop, labels, q, write_q, vertices, weights, values,
                     splat):
    """Rows [start, stop) of the block (exponentials) divided by their sums, one-hot at seeded pixels;
    labels[p] = argmax (first maximum); q[p] = the row when `write_q` (normalised in q's precision);
    when `splat`, each row added into the lattice values of the next iteration (the splat, weighted
    by the normalisation of each kernel). Returns how many labels changed. The number of labels is
    ``token.ndim`` when that is not 0 (see :func:`_label_token`)."""
    n_labels = token.ndim if token.ndim > 0 else block.shape[1]
    n_vertices = vertices.shape[1]
    changed = 0
    for p in range(start, stop):
        i = p - start
        seed = seeds[p]
        if seed != unlabeled:
            for k in range(n_labels):
                block[i, k] = 0.0
            block[i, seed] = 1.0
            best = seed
            if write_q:
                for k in range(n_labels):
                    q[p, k] = block[i, k]
        else:
            total = 0.0  # float64 whatever the block's dtype
            for k in range(n_labels):
                total += block[i, k]
            best = 0
            for k in range(1, n_labels):
                if block[i, k] > block[i, best]:
                    best = k
            inv = 1.0 / total
            if write_q:
                for k in range(n_labels):
                    q[p, k] = block[i, k] * inv
            for k in range(n_labels):
                block[i, k] *= inv
        if labels[p] != best:
            labels[p] = best
            changed += 1
        if splat:
            for r in range(n_vertices):
                v = vertices[p, r]
                w = weights[p, r]
                for k in range(n_labels):
                    values[v, k] += w * block[i, k]
    return changed


#: Up to this many labels the passes are compiled for their number (see :func:`_label_token`).
_UNROLLED_LABELS = 7


def _label_token(n_labels):
    """An array whose number of dimensions is K for K <= _UNROLLED_LABELS, else 0: the passes read K
    from its type, so that Numba compiles them once per such K with the label loops unrolled (1.3 to
    1.7 times faster per iteration, measured for K = 2 to 7); from 8 labels the loops over a run-time
    K vectorise as well or better."""
    return np.empty((1,) * n_labels if n_labels <= _UNROLLED_LABELS else (), dtype=np.int8)


def _check_options(iterations, tol, dtype="float64"):
    iterations = as_scalar(iterations, "iterations", minimum=0, integer=True)
    if tol is not None:
        tol = as_scalar(tol, "tol", minimum=0.0)
    name = getattr(dtype, "__name__", dtype) if not isinstance(dtype, np.dtype) else dtype.name
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    return iterations, tol, np.dtype(name)


def _stop(changed, n_free, tol):
    """Whether the labeling stopped changing: at most a fraction `tol` of the free pixels changed."""
    return changed <= (0.0 if tol is None else tol) * n_free


@njit(nogil=True, cache=True)
def _fuse_kernel(lattice_vertices, barycentric, scale, offset, column, vertices, weights):
    """Columns [column, column + d + 1) of the fused operator for one kernel: its vertices shifted by
    `offset` (its first row in the table of lattice values) and the weights ``scale[p] barycentric[p, r]``."""
    n, dp1 = lattice_vertices.shape
    for p in range(n):
        s = scale[p]
        for r in range(dp1):
            vertices[p, column + r] = lattice_vertices[p, r] + offset
            weights[p, column + r] = s * barycentric[p, r]


def _fused_kernels(problem, dtype):
    """The kernels of `problem` as one operator: (N, R) vertices into one table of lattice values
    (kernel m's M_m + 1 rows, its zero row last, one block after the other) and the (N, R) weights
    ``n_m[p]^-1/2 barycentric_m[p, r]`` of both the splat and the slice (pydensecrf's symmetric
    normalisation scales both sides by n^-1/2); per kernel its rows, blur neighbours and factor
    ``compat_m alpha_m`` (alpha = 1 / (1 + 2^-d), the lattice's constant), which multiplies its lattice
    values after the blur; and the number of table rows (at least 1)."""
    n = problem.shape[0] * problem.shape[1]
    n_vertices = sum(lattice.dim + 1 for _, _, lattice in problem.kernels)
    vertices = np.empty((n, n_vertices), np.int32)
    weights = np.empty((n, n_vertices), dtype)
    blocks, rows, column = [], 0, 0
    for _, compat, lattice in problem.kernels:
        lattice_vertices, barycentric, neighbours = lattice.structure
        in_scale, out_scale = lattice.scales(NORMALIZATION)
        if in_scale is not out_scale:
            raise ValueError("the fused mean-field needs a symmetric normalisation")
        _fuse_kernel(lattice_vertices, barycentric, in_scale, rows, column, vertices, weights)
        m = neighbours.shape[1]
        blocks.append((rows, rows + m + 1, neighbours, dtype.type(compat / (1.0 + 2.0 ** -lattice.dim))))
        rows, column = rows + m + 1, column + lattice.dim + 1
    return vertices, weights, blocks, max(rows, 1)


def mean_field(problem, *, iterations=5, tol=None, callback=None, dtype="float32"):
    """Mean-field on the CPU: one fused pass over the pixels per iteration (Numba, NumPy's exponential).

    Each iteration blurs the lattice values of every kernel (the lattices are small: M lattice points,
    M << N on images), then, block by block of pixels: slices the messages of all kernels, weighted and
    normalised, into the logits; exponentiates them (NumPy, SIMD); normalises them, sets the seeds
    and the argmax, and splats the new marginals into the next iteration's lattice values. The
    messages are never stored; in float32 everything but the normalising sums runs in float32, as
    pydensecrf does.

    Parameters
    ----------
    problem : DenseCRF
    iterations : int, optional
        Maximum number of updates (>= 0).
    tol : float, optional
        Stop early once an update changes the label of at most this fraction of the free pixels
        (0: stop when the labeling no longer changes). None runs every iteration.
    callback : callable, optional
        ``callback(t, q, labels)`` after Q_0 (t = 0) and after each update, with q the (N, K) float64
        marginals and labels the (N,) argmax (views of the working arrays: copy them to keep them).
    dtype : {"float32", "float64"}, optional
        Precision of the lattice values, messages and logits. float32 (default) is pydensecrf's and
        about twice as fast; float64 is the reference (their labels agree on >= 99.9 % of the pixels,
        tests/test_densecrf.py). The returned marginals are float64, normalised in float64, either way.

    Returns
    -------
    q : (H, W, K) float64 ndarray, labels : (H, W) int32 ndarray, changed : list of int (labels changed
    by each update).
    """
    iterations, tol, dtype = _check_options(iterations, tol, dtype)
    height, width, n_labels = problem.unary.shape
    n = height * width
    neg_unary = np.negative(problem.unary.reshape(n, n_labels), dtype=dtype)
    seeds = np.ascontiguousarray(problem.seeds.reshape(n))
    unlabeled = np.int32(problem.unlabeled)
    n_free = int(np.count_nonzero(seeds == unlabeled))
    vertices, weights, blocks, rows = _fused_kernels(problem, dtype)
    splats = bool(blocks) and iterations > 0
    values = np.zeros((rows, n_labels), dtype)
    following = np.zeros((rows, n_labels), dtype)
    scratch = np.zeros((max((stop - start for start, stop, _, _ in blocks), default=1), n_labels), dtype)
    half = dtype.type(0.5)
    block = np.empty((min(_BLOCK, n), n_labels), dtype)
    q = np.empty((n, n_labels))
    labels = np.full(n, -1, dtype=np.int32)
    token = _label_token(n_labels)

    def update(t, splat):
        """Q_t from the lattice values in `values` (Q_0: from the unaries alone); returns the changes."""
        write_q = callback is not None or tol is not None or t == iterations
        changed = 0
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            rows_here = block[:stop - start]
            _logits(token, neg_unary, vertices, weights, values, t > 0, start, stop, rows_here)
            np.exp(rows_here, out=rows_here)
            changed += _normalize_splat(token, rows_here, seeds, unlabeled, start, stop, labels, q, write_q, vertices,
                                        weights, following, splat)
        return changed

    update(0, splats)
    if callback is not None:
        callback(0, q, labels)
    changed = []
    for t in range(1, iterations + 1):
        values, following = following, values
        for start, stop, neighbours, factor in blocks:
            _blur(neighbours, values[start:stop], scratch[:stop - start], half, factor)
        following.fill(0)
        last = t == iterations
        changed.append(update(t, splats and not last))
        if callback is not None:
            callback(t, q, labels)
        if tol is not None and _stop(changed[-1], n_free, tol):
            break
    return q.reshape(height, width, n_labels), labels.reshape(height, width), changed


def mean_field_xp(problem, xp, *, iterations=5, tol=None, callback=None):
    """The same mean-field written for an array module `xp` (NumPy or CuPy), every step on `xp`: the
    lattices are :class:`~admsolve.filters.array_lattice.ArrayLattice` built on `xp` (bit-identical to the Numba
    lattice on NumPy). Same parameters and results as :func:`mean_field`, with q and labels arrays
    of `xp`."""
    iterations, tol, _ = _check_options(iterations, tol)
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


#: The accepted values of ``history``.
HISTORIES = ("ends", "all")


def minimize(problem, init, *, max_iter=5, device=None, tol=None, history="ends", dtype="float32"):
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
    history : {"ends", "all"}, optional
        Which reference energies to record: "ends" (default) those of `init` and of the result;
        "all" also the argmax after every update (each costs about a filter of one channel per
        kernel: a fair share of an update). The labels are the same either way.
    dtype : {"float32", "float64"}, optional
        Precision of the CPU iterations (see :func:`mean_field`): float32 (default) as pydensecrf,
        float64 as the reference; >= 99.9 % of the labels agree. The CuPy path runs in float64.

    Returns
    -------
    dict with ``labels``, ``message``, ``iterations`` (updates run), ``history`` (``problem.energy(init)``,
    then that of the result, or of the argmax after each update with ``history="all"``), ``converged``
    (the last update changed at most a fraction `tol` of the free labels, none when `tol` is None; False
    when no update ran) and ``probs`` ((H, W, K) float64 NumPy marginals Q).
    """
    iterations, tol, dtype = _check_options(5 if max_iter is None else max_iter, tol, dtype)
    if not isinstance(history, str) or history not in HISTORIES:
        raise ValueError(f"history: expected one of {HISTORIES}, got {history!r}")
    xp = device_module(problem.device if device is None else device)
    energies = [problem.energy(init)]
    record = None
    if history == "all":
        def record(t, q, labels):
            if t > 0:
                energies.append(problem.energy(to_numpy(labels).reshape(problem.shape)))

    if xp is np:
        q, labels, changed = mean_field(problem, iterations=iterations, tol=tol, callback=record, dtype=dtype)
    else:
        q, labels, changed = mean_field_xp(problem, xp, iterations=iterations, tol=tol, callback=record)
    labels = to_numpy(labels).astype(np.int32)
    if history == "ends" and changed:
        energies.append(problem.energy(labels))
    n_free = int(np.count_nonzero(~problem.seeded))
    converged = bool(changed) and _stop(changed[-1], n_free, tol)
    message = (f"converged: the last update changed at most a fraction tol = {tol or 0:g} of the free labels"
               if converged else f"stopped: {iterations} updates (max_iter) run")
    return {"labels": labels, "history": energies, "iterations": len(changed), "converged": converged,
            "message": message, "probs": np.asarray(to_numpy(q), dtype=np.float64)}
