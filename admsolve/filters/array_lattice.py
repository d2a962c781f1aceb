"""The permutohedral lattice of :mod:`admsolve.filters.lattice`, written with array-module operations only,
so that the same code runs on NumPy (CPU) and on CuPy (GPU), the module taken from the features.

:class:`ArrayLattice` has the constructor and :meth:`~ArrayLattice.filter` of
:class:`admsolve.filters.lattice.PermutohedralLattice` and computes the same operator: the simplex search
runs in float32 with the operations of the Numba kernel (so the same lattice points are found), the
splat, blur (directions 0..d, or d..0 for the transpose) and slice in float64 in the same order.

Instead of a hash table, the lattice points are deduplicated by sorting ("sort-based hash"): each
integer key is encoded as one int64 (a mixed-radix number when the key ranges allow it, else a dense
rank built one coordinate at a time with ``unique``), ``unique(..., return_inverse=True)`` gives the
lattice point of every simplex vertex, and ``searchsorted`` in the sorted codes finds the blur
neighbours. Splatting is a ``bincount`` with weights per channel (no ``add.at``), the blur a pair of
gathers per direction with a zero sentinel row for missing neighbours, slicing a gather.

On NumPy the result equals :class:`~admsolve.filters.lattice.PermutohedralLattice` to the last bit or
nearly (the splat sums in the same order); on CuPy the splat's atomic additions sum in any order.
"""

from __future__ import annotations

import numpy as np

from .._array import AnyArray, array_module
from .._validation import describe
from .features import (MAX_ELEVATED, as_features, as_flag, as_values, check_normalization, normalization_scales,
                       within_range)

__all__ = ["ArrayLattice"]

# Mixed-radix codes of the keys are used while the product of the radices stays below this.
_MAX_CODE = 2**62


def _features(features):
    """Checked (N, d) float64 features on their own array module."""
    xp = array_module(features)
    if xp is np:
        return np, as_features(features)
    if features.ndim != 2 or features.size == 0 or features.dtype.kind not in "biuf":
        raise ValueError(f"features: expected a non-empty 2-D real array, got array of shape "
                         f"{features.shape} and dtype {features.dtype}")
    features = xp.ascontiguousarray(features, dtype=xp.float64)
    if not bool(xp.all(xp.isfinite(features))):
        bad = int(features.size - int(xp.count_nonzero(xp.isfinite(features))))
        raise ValueError(f"features: expected finite values, got {bad} NaN or infinite entries")
    n, d = features.shape
    bound = MAX_ELEVATED / (2.0 * d * (d + 1))
    largest = float(xp.abs(features).max())
    if largest > bound:
        raise ValueError(f"features: expected absolute values <= {bound:g} (the lattice is located in "
                         f"float32), got maximum {largest:g}")
    return xp, features


def _dense_codes(xp, rows):
    """int64 codes of the rows of an (K, d) integer array, equal exactly for equal rows: the dense
    rank of the rows, built one column at a time (each step below K * 2^25 < 2^63)."""
    code = xp.zeros(rows.shape[0], dtype=xp.int64)
    for i in range(rows.shape[1]):
        col = rows[:, i].astype(xp.int64)
        low = col.min()
        span = int(col.max() - low) + 1
        _, code = xp.unique(code * span + (col - low), return_inverse=True)
        code = code.reshape(-1).astype(xp.int64)
    return code


def _simplices(xp, features):
    """Vertex keys and barycentric weights of the simplex enclosing each point, located in float32
    with the operations (and so the rounding) of bilateral._build_lattice.

    Returns ``(keys, barycentric)``: (N, d+1, d) int32 first d coordinates of the d+1 lattice points
    (vertex r has remainder r) and (N, d+1) float64 weights.
    """
    n, d = features.shape
    dp1 = d + 1
    f32 = np.float32
    inv_std = f32(np.sqrt(2.0 / 3.0) * dp1)
    scale = [f32(1.0 / np.sqrt((i + 1.0) * (i + 2.0)) * np.float64(inv_std)) for i in range(d)]
    down = f32(1.0) / f32(dp1)
    up = f32(dp1)
    feats = features.astype(xp.float32)

    # Elevate onto x_0 + ... + x_d = 0.
    elevated = xp.empty((n, dp1), dtype=xp.float32)
    total = xp.zeros(n, dtype=xp.float32)
    for j in range(d, 0, -1):
        cf = feats[:, j - 1] * scale[j - 1]
        elevated[:, j] = total - f32(j) * cf
        total = total + cf
    elevated[:, 0] = total
    # Nearest remainder-0 point.
    v = xp.rint(down * elevated)
    rem0 = v * up
    coord_sum = v.astype(xp.int64).sum(axis=1)
    # Ranks of the residual, largest first (ties: the earlier coordinate ranks lower, as the kernel).
    resid = elevated - rem0
    below = resid[:, :, None] < resid[:, None, :]  # below[p, i, j]: resid_i < resid_j
    upper = xp.asarray(np.triu(np.ones((dp1, dp1), dtype=bool), 1))
    # rank_i = #{j > i: resid_i < resid_j} + #{j < i: not resid_j < resid_i}
    rank = (below & upper).sum(axis=2) + ((~below) & upper).sum(axis=1)
    rank = rank.astype(xp.int64) + coord_sum[:, None]
    low = rank < 0
    high = rank > d
    rank = xp.where(low, rank + dp1, xp.where(high, rank - dp1, rank))
    rem0 = xp.where(low, rem0 + up, xp.where(high, rem0 - up, rem0))
    # Barycentric weights: with w_r the scaled residual of the coordinate of rank r,
    # b_k = w_{d-k} - w_{d-k+1} (k = 1..d) and b_0 = w_d + (1 - w_0), each rounded once in float32.
    w = (elevated - rem0) * down
    by_rank = xp.take_along_axis(w, xp.argsort(rank, axis=1), axis=1)
    bary = xp.empty((n, dp1), dtype=xp.float32)
    bary[:, 1:] = by_rank[:, d - 1::-1] - by_rank[:, :0:-1]
    bary[:, 0] = by_rank[:, d] + (f32(1.0) - by_rank[:, 0])
    # Vertex r: rem0 + canonical[r, rank], canonical[r, k] = r if k <= d - r else r - (d+1).
    r = xp.arange(dp1, dtype=xp.int64)[None, :, None]
    base = rem0[:, None, :d].astype(xp.int64)
    keys = base + r - dp1 * (rank[:, None, :d] > d - r).astype(xp.int64)
    return keys.astype(xp.int32), bary.astype(xp.float64)


def _build(xp, features):
    """(vertices, barycentric, neighbours, n_lattice_points): (N, d+1) lattice point of each
    vertex, (N, d+1) weights, (d+1, 2, M) neighbour indices along each blur direction (M where
    missing)."""
    n, d = features.shape
    dp1 = d + 1
    keys, barycentric = _simplices(xp, features)
    flat = keys.reshape(n * dp1, d).astype(xp.int64)
    # Offsets of the two neighbours along direction j: -1 in every coordinate and +d in j (the
    # first), +1 and -d (the second); direction d changes only the implicit last coordinate.
    offsets = np.empty((dp1, 2, d), dtype=np.int64)
    offsets[:, 0] = -1
    offsets[:, 1] = 1
    for j in range(d):
        offsets[j, 0, j] = d
        offsets[j, 1, j] = -d
    # Mixed radix with every digit shifted to stay in range after the +-d offsets.
    low = flat.min(axis=0) - dp1
    high = flat.max(axis=0) + dp1
    radix = [int(x) + 1 for x in (high - low).tolist()]
    if float(np.prod(np.array(radix, dtype=np.float64))) < _MAX_CODE:
        strides = np.ones(d, dtype=np.int64)
        for i in range(d - 2, -1, -1):
            strides[i] = strides[i + 1] * radix[i + 1]
        strides_xp = xp.asarray(strides)
        codes = ((flat - low[None, :]) * strides_xp[None, :]).sum(axis=1)
        sorted_codes, inverse = xp.unique(codes, return_inverse=True)
        m = int(sorted_codes.shape[0])
        shift = xp.asarray(offsets @ strides)  # (d+1, 2): code offset of each neighbour
        queries = sorted_codes[None, None, :] + shift[:, :, None]
        point_of = None
    else:
        codes = _dense_codes(xp, flat)  # already the dense rank: 0..M-1
        inverse = codes
        m = int(codes.max()) + 1
        representative = xp.empty(m, dtype=xp.int64)
        representative[codes] = xp.arange(n * dp1, dtype=xp.int64)
        points = flat[representative]  # (M, d)
        neighbour_keys = points[None, None] + xp.asarray(offsets)[:, :, None, :]
        both = _dense_codes(xp, xp.concatenate([points, neighbour_keys.reshape(-1, d)]))
        point_codes = both[:m]
        point_of = xp.argsort(point_codes)
        sorted_codes = point_codes[point_of]
        queries = both[m:].reshape(dp1, 2, m)
    position = xp.searchsorted(sorted_codes, queries.reshape(-1))
    position = xp.minimum(position, m - 1)
    found = sorted_codes[position] == queries.reshape(-1)
    if point_of is not None:
        position = point_of[position]
    neighbours = xp.where(found, position, m).reshape(dp1, 2, m)
    vertices = inverse.reshape(n, dp1)
    return vertices, barycentric, neighbours, m


def _filter(xp, vertices, barycentric, neighbours, m, values, in_scale, out_scale, reverse):
    """out = diag(out_scale) alpha S^T B S diag(in_scale) values, as bilateral._lattice_filter."""
    n, dp1 = vertices.shape
    c = values.shape[1]
    flat_vertices = vertices.reshape(-1)
    scaled = in_scale[:, None] * values
    # Splat: row m stays zero, the value of every missing neighbour.
    current = xp.empty((m + 1, c), dtype=xp.float64)
    for k in range(c):
        weights = (barycentric * scaled[:, k:k + 1]).reshape(-1)
        current[:, k] = xp.bincount(flat_vertices, weights=weights, minlength=m + 1)[:m + 1]
    current[m] = 0.0
    scratch = xp.zeros_like(current)
    for step in range(dp1):
        j = dp1 - 1 - step if reverse else step
        scratch[:m] = current[:m] + 0.5 * (current[neighbours[j, 0]] + current[neighbours[j, 1]])
        current, scratch = scratch, current
    alpha = 1.0 / (1.0 + 2.0 ** (1 - dp1))
    out = barycentric[:, 0:1] * current[vertices[:, 0]]
    for r in range(1, dp1):
        out += barycentric[:, r:r + 1] * current[vertices[:, r]]
    out *= (alpha * out_scale)[:, None]
    return out


class ArrayLattice:
    """:class:`admsolve.filters.lattice.PermutohedralLattice` on an array module (NumPy or CuPy).

    Parameters
    ----------
    features : (N, d) NumPy or CuPy array of float
        As for :class:`~admsolve.filters.lattice.PermutohedralLattice`; the lattice lives on the array
        module (CPU or GPU) of `features`, and :meth:`filter` takes and returns arrays of it.

    Attributes
    ----------
    n_points, dim, n_lattice_points : int
        N, d and M, as for :class:`~admsolve.filters.lattice.PermutohedralLattice`.
    xp : module
        numpy or cupy.
    """

    def __init__(self, features: AnyArray) -> None:
        self.xp, features = _features(features)
        self.n_points, self.dim = features.shape
        self._vertices, self._barycentric, self._neighbours, self.n_lattice_points = _build(self.xp, features)
        ones = self.xp.ones(self.n_points)
        self._ones_response = _filter(self.xp, self._vertices, self._barycentric, self._neighbours,
                                      self.n_lattice_points, ones[:, None], ones, ones, False)[:, 0]

    def __repr__(self) -> str:
        return (f"ArrayLattice(n_points={self.n_points}, dim={self.dim}, "
                f"n_lattice_points={self.n_lattice_points}, xp={self.xp.__name__})")

    @property
    def ones_response(self) -> AnyArray:
        """(N,) float64: the unnormalised filter of ones, ``n = W 1`` (a copy)."""
        return self._ones_response.copy()

    def filter(self, values: AnyArray, *, normalization: str = "symmetric", transpose: bool = False,
               out: AnyArray | None = None) -> AnyArray:
        """Gaussian filter of `values` over the features; see
        :meth:`admsolve.filters.lattice.PermutohedralLattice.filter`. `values` (and `out`) must be arrays
        of the lattice's module (a NumPy lattice also takes array_likes)."""
        xp = self.xp
        normalization = check_normalization(normalization)
        transpose = as_flag(transpose, "transpose")
        if xp is np:
                array, flat = as_values(values, self.n_points)
        else:
            if array_module(values) is not xp:
                raise TypeError(f"values: expected a {xp.__name__} array, got {describe(values)}")
            if values.ndim not in (1, 2) or values.size == 0 or values.dtype.kind not in "biuf":
                raise ValueError(f"values: expected a non-empty 1-D or 2-D real array, got array of "
                                 f"shape {values.shape} and dtype {values.dtype}")
            array = values.astype(xp.float64, copy=False)
            flat = array.ndim == 1
            if flat:
                array = array[:, None]
            if array.shape[0] != self.n_points:
                raise ValueError(f"values: expected {self.n_points} rows (one per feature point), "
                                 f"got array of shape {values.shape}")
            bad = int(array.size - int(xp.count_nonzero(xp.isfinite(array))))
            if bad:
                raise ValueError(f"values: expected finite values, got {bad} NaN or infinite entries")
        wanted = (self.n_points,) if flat else array.shape
        if out is not None:
            if not (array_module(out) is xp and out.dtype == xp.float64 and out.shape == wanted
                    and out.flags.c_contiguous and (xp is not np or out.flags.writeable)):
                raise ValueError(f"out: expected a writeable C-contiguous float64 array of shape {wanted}, "
                                 f"got {describe(out)}")
            if xp is np and np.shares_memory(out, array):
                raise ValueError("out: expected an array that does not overlap values")
        in_scale, out_scale = normalization_scales(self._ones_response, normalization, transpose)
        result = within_range(lambda values: _filter(xp, self._vertices, self._barycentric, self._neighbours,
                                                     self.n_lattice_points, values, in_scale, out_scale, transpose),
                              array, xp)
        if out is not None:
            out.reshape(result.shape)[...] = result
            return out
        return result[:, 0] if flat else result
