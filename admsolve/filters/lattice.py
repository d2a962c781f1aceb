"""Gaussian filtering over a feature space with the permutohedral lattice (Adams, Baek & Davis,
"Fast High-Dimensional Filtering Using the Permutohedral Lattice", 2010), as used by the dense CRF
of Krähenbühl & Koltun (2011): splat, blur, slice.

Given features f_i (one row per pixel, already divided by their standard deviations) and values
v_i (one row of C channels per pixel), the Gaussian filter is

    out_i = sum_j k(f_i, f_j) v_j,        k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2),

with the sum over every pixel j, the pixel i itself included (k(f_i, f_i) = 1). The lattice
computes an approximation of it: built once per feature set in O(N d^2) time (N pixels, d feature
dimensions), it then filters all C channels in O((N + M) d C) per call (M lattice points), and is
reused for every call: mean-field inference filters with the same lattice at every iteration.
:func:`exact_filter` computes the sum itself, in O(N^2 d C), as a reference for tests.

Normalisation follows pydensecrf (``NormalizationType``); with ``n = W 1``, the filter of a vector
of ones:

* ``"symmetric"`` (pydensecrf's default, ``NORMALIZE_SYMMETRIC``): ``out = n^-1/2 W (n^-1/2 v)``;
* ``"after"`` (``NORMALIZE_AFTER``): ``out = n^-1 W v``, a weighted average per pixel;
* ``"before"`` (``NORMALIZE_BEFORE``): ``out = W (n^-1 v)``;
* ``"none"`` (``NO_NORMALIZATION``): ``out = W v``.

``W`` stands for the lattice operator in :class:`PermutohedralLattice` and for the exact kernel
matrix in :func:`exact_filter`. The lattice operator is the one pydensecrf computes: the same
feature scaling, simplex search (in float32), barycentric weights, blur order (directions 0, 1,
..., d, each with the taps 1/2, 1, 1/2) and the constant 1 / (1 + 2^-d). So, for every
normalisation, :meth:`PermutohedralLattice.filter` over :func:`bilateral_features` (or
:func:`gaussian_features`) is the message that pydensecrf's ``addPairwiseBilateral`` (or
``addPairwiseGaussian``) computes before its label compatibility, up to pydensecrf's float32
arithmetic (measured: within 1.3e-6 of the largest entry). In mean-field terms, with a Potts
compatibility of weight w, pydensecrf's update is ``Q <- softmax(-unary + w * filter(Q))``. Like
pydensecrf, the filter does not remove the centre pixel: ``out_i`` includes ``v_i`` with the
weight the lattice gives the pixel itself.

The lattice is an approximation (see :class:`PermutohedralLattice`): unnormalised, it loses about
half the Gaussian mass for 5-D bilateral features; normalised, its relative L2 error against the
exact filter is about 4% on piecewise-constant images and up to 14-15% on small smooth or noisy
ones, for some bandwidths (measured in tests/test_bilateral.py).
"""

import numpy as np
from numba import njit

from .._validation import as_real_array, describe
from .features import (NORMALIZATIONS, as_features, as_flag, as_image, as_values, bilateral_features,
                       check_normalization, gaussian_features, normalization_scales, within_range)

__all__ = [
    "NORMALIZATIONS",
    "PermutohedralLattice",
    "bilateral_features",
    "bilateral_filter",
    "exact_filter",
    "gaussian_features",
]

# --------------------------------------------------------------------------- Numba kernels


# Hash tables: open addressing with linear probing, in one (size, 1 + width) int32 array whose
# row holds the index of an entry (-1 for an empty slot) and its key, so a probe reads one row.
# The size is a power of two and the table is kept at most half full.


@njit(nogil=True, cache=True)
def _hash_key(key):
    """Hash of an int32 key (FNV-1a over its entries, then a shift to mix the high bits down)."""
    h = np.uint64(14695981039346656037)
    for k in range(key.shape[0]):
        h = (h ^ np.uint64(np.int64(key[k]) & 0xFFFFFFFF)) * np.uint64(1099511628211)
    return h ^ (h >> np.uint64(29))


@njit(nogil=True, cache=True)
def _find_slot(table, key):
    """Row of `table` that holds `key`, or the empty row where it would go."""
    mask = np.uint64(table.shape[0] - 1)
    slot = _hash_key(key) & mask
    width = key.shape[0]
    while True:
        if table[slot, 0] < 0:
            return slot
        same = True
        for k in range(width):
            if table[slot, k + 1] != key[k]:
                same = False
                break
        if same:
            return slot
        slot = (slot + np.uint64(1)) & mask


@njit(nogil=True, cache=True)
def _new_table(size, width):
    return np.full((size, 1 + width), -1, dtype=np.int32)


@njit(nogil=True, cache=True)
def _insert(table, slot, key, index):
    """Store `key` with `index` in the empty row `slot`; returns the table, doubled when it gets
    more than half full."""
    table[slot, 0] = index
    table[slot, 1:] = key
    if 2 * (index + 1) <= table.shape[0]:
        return table
    grown = _new_table(2 * table.shape[0], key.shape[0])
    for row in range(table.shape[0]):
        if table[row, 0] >= 0:
            grown[_find_slot(grown, table[row, 1:])] = table[row]
    return grown


@njit(nogil=True, cache=True)
def _append_row(rows, count, row):
    """rows[count] = row, doubling `rows` first when it is full; returns `rows`."""
    if count == rows.shape[0]:
        grown = np.empty((2 * count, rows.shape[1]), dtype=rows.dtype)
        grown[:count] = rows
        rows = grown
    rows[count] = row
    return rows


@njit(nogil=True, cache=True)
def _build_lattice(features):
    """The lattice of (N, d) float32 features.

    Returns ``(vertices, barycentric, keys, neighbours)``: (N, d+1) int32 lattice point of each
    vertex of the simplex enclosing each pixel, (N, d+1) float64 barycentric weights (summing to 1),
    (M, d) int32 coordinates of the M lattice points (the last coordinate is minus the sum of the
    others), and (d+1, M, 2) int32 indices of the two neighbours of each point along each blur
    direction, M where the neighbour does not exist.
    """
    n, d = features.shape
    dp1 = d + 1
    # The simplex search runs in float32 with pydensecrf's operations and rounding, so that points
    # on (or within float32 rounding of) a simplex boundary land on the same lattice points.
    # Scale so that the blur (taps 1/2, 1, 1/2 along each of the d+1 directions) matches a
    # unit-variance Gaussian: the variance of the blur is 2/3 (d+1)^2 in lattice units.
    inv_std = np.float32(np.sqrt(2.0 / 3.0) * dp1)
    scale = np.empty(d, dtype=np.float32)
    for i in range(d):
        scale[i] = np.float32(1.0 / np.sqrt((i + 1.0) * (i + 2.0)) * np.float64(inv_std))
    down = np.float32(1.0) / np.float32(dp1)
    up = np.float32(dp1)
    # canonical[r, i]: coordinate i of the remainder-r vertex of the canonical simplex.
    canonical = np.empty((dp1, dp1), dtype=np.int32)
    for r in range(dp1):
        for i in range(dp1):
            canonical[r, i] = r if i <= d - r else r - dp1

    # The lattice points found so far, keyed by their first d coordinates, and the simplices,
    # keyed by their remainder-0 vertex and the ranks, with their d+1 lattice points: most pixels
    # share their simplex with others and need a single look-up.
    point_table = _new_table(2048, d)
    keys = np.empty((1024, d), dtype=np.int32)
    n_points = 0
    simplex_table = _new_table(2048, 2 * d)
    simplex_points = np.empty((1024, dp1), dtype=np.int32)
    n_simplices = 0

    vertices = np.empty((n, dp1), dtype=np.int32)
    barycentric = np.empty((n, dp1))
    elevated = np.empty(dp1, dtype=np.float32)
    rem0 = np.empty(dp1, dtype=np.float32)
    rank = np.empty(dp1, dtype=np.int64)
    bary = np.empty(dp1 + 1, dtype=np.float32)
    key = np.empty(d, dtype=np.int32)
    simplex_key = np.empty(2 * d, dtype=np.int32)
    found = np.empty(dp1, dtype=np.int32)
    slot = np.uint64(0)
    for p in range(n):
        # Elevate onto the hyperplane x_0 + ... + x_d = 0 (E f, p. 5 of Adams et al.).
        total = np.float32(0.0)
        for j in range(d, 0, -1):
            cf = features[p, j - 1] * scale[j - 1]
            elevated[j] = total - np.float32(j) * cf
            total += cf
        elevated[0] = total
        # The nearest remainder-0 point: every coordinate rounded to a multiple of d+1 (half to even).
        coord_sum = 0
        for i in range(dp1):
            v = np.rint(down * elevated[i])
            rem0[i] = v * up
            coord_sum += np.int64(v)
        # Rank of each coordinate of the residual, largest first: this picks the simplex.
        for i in range(dp1):
            rank[i] = 0
        for i in range(d):
            di = elevated[i] - rem0[i]
            for j in range(i + 1, dp1):
                below = np.int64(di < elevated[j] - rem0[j])
                rank[i] += below
                rank[j] += 1 - below
        # Bring the rounded point back onto the hyperplane.
        for i in range(dp1):
            rank[i] += coord_sum
            if rank[i] < 0:
                rank[i] += dp1
                rem0[i] += up
            elif rank[i] > d:
                rank[i] -= dp1
                rem0[i] -= up
        # Barycentric coordinates (p. 10 of Adams et al.).
        for i in range(dp1 + 1):
            bary[i] = 0.0
        for i in range(dp1):
            v = (elevated[i] - rem0[i]) * down
            bary[d - rank[i]] += v
            bary[d - rank[i] + 1] -= v
        bary[0] += np.float32(1.0) + bary[dp1]
        # The d+1 lattice points of the simplex.
        for i in range(d):
            simplex_key[i] = np.int32(rem0[i])
            simplex_key[d + i] = rank[i]
        # (often the simplex of the previous pixel)
        same = p > 0
        for i in range(2 * d):
            if simplex_table[slot, i + 1] != simplex_key[i]:
                same = False
                break
        if not same:
            slot = _find_slot(simplex_table, simplex_key)
        s = simplex_table[slot, 0]
        if s < 0:
            for r in range(dp1):
                for i in range(d):
                    key[i] = np.int32(rem0[i]) + canonical[r, rank[i]]
                point_slot = _find_slot(point_table, key)
                index = point_table[point_slot, 0]
                if index < 0:
                    index = n_points
                    keys = _append_row(keys, n_points, key)
                    point_table = _insert(point_table, point_slot, key, index)
                    n_points += 1
                found[r] = index
            s = n_simplices
            simplex_points = _append_row(simplex_points, n_simplices, found)
            simplex_table = _insert(simplex_table, slot, simplex_key, s)
            n_simplices += 1
        for r in range(dp1):
            vertices[p, r] = simplex_points[s, r]
            barycentric[p, r] = bary[r]

    # Blur neighbours: along direction j a point moves by +-(d+1) in coordinate j and -+1 in the
    # others (direction d changes only the implicit coordinate d).
    m = n_points
    neighbours = np.empty((dp1, m, 2), dtype=np.int32)
    n1 = np.empty(d, dtype=np.int32)
    n2 = np.empty(d, dtype=np.int32)
    for j in range(dp1):
        for index in range(m):
            for k in range(d):
                n1[k] = keys[index, k] - 1
                n2[k] = keys[index, k] + 1
            if j < d:
                n1[j] = keys[index, j] + d
                n2[j] = keys[index, j] - d
            a = point_table[_find_slot(point_table, n1), 0]
            b = point_table[_find_slot(point_table, n2), 0]
            neighbours[j, index, 0] = a if a >= 0 else m
            neighbours[j, index, 1] = b if b >= 0 else m
    return vertices, barycentric, keys[:m].copy(), neighbours


@njit(nogil=True, cache=True)
def _lattice_filter(vertices, barycentric, neighbours, values, in_scale, out_scale, reverse, out):
    """out = diag(out_scale) alpha S^T B S diag(in_scale) values.

    Splat with the barycentric weights (S), blur along the d+1 directions 0..d (B; d..0 when
    `reverse`, which gives the transpose), slice with the same weights (S^T), times the constant
    alpha = 1 / (1 + 2^-d) of Adams et al. (the weight a lattice point gets back from itself).
    """
    n, dp1 = vertices.shape
    m = neighbours.shape[1]
    c = values.shape[1]
    # Row m stays zero: the value of every missing neighbour.
    current = np.zeros((m + 1, c))
    scratch = np.zeros((m + 1, c))
    row = np.empty(c)
    for p in range(n):
        s = in_scale[p]
        for k in range(c):
            row[k] = s * values[p, k]
        for r in range(dp1):
            v = vertices[p, r]
            w = barycentric[p, r]
            for k in range(c):
                current[v, k] += w * row[k]
    for step in range(dp1):
        j = dp1 - 1 - step if reverse else step
        for index in range(m):
            a = neighbours[j, index, 0]
            b = neighbours[j, index, 1]
            for k in range(c):
                scratch[index, k] = current[index, k] + 0.5 * (current[a, k] + current[b, k])
        current, scratch = scratch, current
    alpha = 1.0 / (1.0 + 2.0 ** (1 - dp1))
    for p in range(n):
        for k in range(c):
            row[k] = 0.0
        for r in range(dp1):
            v = vertices[p, r]
            w = barycentric[p, r]
            for k in range(c):
                row[k] += w * current[v, k]
        s = alpha * out_scale[p]
        for k in range(c):
            out[p, k] = s * row[k]


@njit(nogil=True, cache=True)
def _exact_filter(values, features, out):
    """out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j over every j, i included."""
    n, d = features.shape
    c = values.shape[1]
    for i in range(n):
        for k in range(c):
            out[i, k] = 0.0
        for j in range(n):
            dist = 0.0
            for t in range(d):
                diff = features[i, t] - features[j, t]
                dist += diff * diff
            w = np.exp(-0.5 * dist)
            for k in range(c):
                out[i, k] += w * values[j, k]


# --------------------------------------------------------------------------- input checks


# --------------------------------------------------------------------------- public API


class PermutohedralLattice:
    """The permutohedral lattice of a set of feature points, for fast Gaussian filtering.

    Built once from the features; :meth:`filter` then costs O((N + M) d C) per call, N points,
    d dimensions, M lattice points, C channels.

    Parameters
    ----------
    features : (N, d) array_like of float
        One row per point (pixel), each feature already divided by its standard deviation, so that
        the filter approximates the kernel exp(-|f_i - f_j|^2 / 2). Must be finite, with absolute
        values below about 2^23 / (2 d (d + 1)).

    Attributes
    ----------
    n_points : int
        N.
    dim : int
        d.
    n_lattice_points : int
        M, the lattice points touched by the simplices of the features (at most N (d+1)).

    Notes
    -----
    The lattice is the one of pydensecrf (Krähenbühl & Koltun 2011, after Adams et al. 2010),
    located in float32 with the same operations, so it has the same lattice points, and the filter
    matches pydensecrf's up to float32 rounding (pydensecrf filters in float32, this class in
    float64).

    It is an approximation, and a coarse one in more than 2 or 3 dimensions: lattice points that
    no simplex touches are dropped, and the mass the blur would send there is lost, so without
    normalisation the filter underestimates the Gaussian sum (by about half for 5-D bilateral
    features of an image); the normalisations cancel most of that.

    The operator is not exactly symmetric: the blur runs through the directions 0, 1, ..., d and,
    with the missing lattice points, the directions do not quite commute. ``transpose=True`` runs
    them in the reverse order and gives the exact transpose.
    """

    def __init__(self, features):
        features = as_features(features)
        self.n_points, self.dim = features.shape
        self._vertices, self._barycentric, self._keys, self._neighbours = _build_lattice(
            features.astype(np.float32))
        self.n_lattice_points = self._keys.shape[0]
        ones = np.ones(self.n_points)
        response = np.empty((self.n_points, 1))
        _lattice_filter(self._vertices, self._barycentric, self._neighbours, ones[:, None], ones, ones,
                        False, response)
        self._ones_response = response[:, 0]
        self._ones_response.flags.writeable = False

    def __repr__(self):
        return (f"PermutohedralLattice(n_points={self.n_points}, dim={self.dim}, "
                f"n_lattice_points={self.n_lattice_points})")

    @property
    def ones_response(self):
        """(N,) float64, read-only: the unnormalised filter of a vector of ones, ``n = W 1``, from
        which the normalisations are made (pydensecrf's ``norm_`` before inversion)."""
        return self._ones_response

    def filter(self, values, *, normalization="symmetric", transpose=False, out=None):
        """Gaussian filter of `values` over the features.

        Parameters
        ----------
        values : (N,) or (N, C) array_like of float
            One row per feature point. Must be finite. A float64 array is read in place.
        normalization : {"symmetric", "after", "before", "none"}, optional
            See the module docstring; "symmetric" is pydensecrf's default, "none" the unnormalised
            lattice sum (centre included), which underestimates the Gaussian-weighted sum.
        transpose : bool, optional
            Apply the transpose of the operator (the blur directions in reverse order; "before"
            and "after" swap).
        out : ndarray, optional
            A C-contiguous float64 array of the shape of `values` (not `values` itself) to write to.

        Returns
        -------
        ndarray of float64, the shape of `values` (`out` when given)
        """
        normalization = check_normalization(normalization)
        array, flat = as_values(values, self.n_points)
        transpose = as_flag(transpose, "transpose")
        if out is None:
            result = np.empty(array.shape)
        else:
            wanted = (self.n_points,) if flat else array.shape
            if not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == wanted
                    and out.flags.c_contiguous and out.flags.writeable):
                raise ValueError(f"out: expected a writeable C-contiguous float64 array of shape {wanted}, "
                                 f"got {describe(out)}")
            if np.shares_memory(out, array):
                raise ValueError("out: expected an array that does not overlap values")
            result = out.reshape(array.shape)
        in_scale, out_scale = normalization_scales(self._ones_response, normalization, transpose)

        def run(values):
            _lattice_filter(self._vertices, self._barycentric, self._neighbours, values, in_scale, out_scale,
                            transpose, result)
            return result

        within_range(run, array, np)
        if out is not None:
            return out
        return result[:, 0] if flat else result


def bilateral_filter(values, image, *, sxy=80, srgb=13, normalization="symmetric"):
    """Bilateral (position + colour) Gaussian filter of `values`, as pydensecrf's bilateral kernel.

    For ``values = Q`` (label probabilities), the result is the message of pydensecrf's
    ``addPairwiseBilateral(sxy, srgb, image, compat)`` before the compatibility. Builds
    :func:`bilateral_features` and a :class:`PermutohedralLattice` and filters once; to filter
    several times over the same image, build the lattice once and call its :meth:`filter`.

    Parameters
    ----------
    values : (H, W, C) array_like of float
        Must be finite.
    image : (H, W, 3) array_like
        uint8 or float colours.
    sxy, srgb : float, optional
        Standard deviations in pixels and in colour units (pydensecrf's names and meaning), > 0.
    normalization : {"symmetric", "after", "before", "none"}, optional
        See the module docstring; the default is pydensecrf's.

    Returns
    -------
    (H, W, C) ndarray of float64
    """
    values = as_real_array(values, "values", 3)
    image = as_image(image)
    if values.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"values: expected shape ({image.shape[0]}, {image.shape[1]}, C) to match image of shape "
            f"{image.shape}, got array of shape {values.shape}"
        )
    normalization = check_normalization(normalization)
    height, width, channels = values.shape
    features = as_features(bilateral_features(image, sxy=sxy, srgb=srgb),
                            "features (pixel coordinates / sxy, image / srgb)")
    lattice = PermutohedralLattice(features)
    out = lattice.filter(values.reshape(height * width, channels), normalization=normalization)
    return out.reshape(height, width, channels)


def exact_filter(values, features, *, normalization="symmetric"):
    """The exact Gaussian filter that the lattice approximates, in O(N^2 d C): a reference for tests.

    ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j``, the sum over every j including i, then the
    normalisation as in :meth:`PermutohedralLattice.filter` (with ``n`` the exact row sums).

    Parameters
    ----------
    values : (N,) or (N, C) array_like of float
    features : (N, d) array_like of float
    normalization : {"symmetric", "after", "before", "none"}, optional

    Returns
    -------
    ndarray of float64, the shape of `values`
    """
    normalization = check_normalization(normalization)
    features = as_features(features)
    values, flat = as_values(values, features.shape[0])

    def raw(v):
        result = np.empty_like(v)
        _exact_filter(np.ascontiguousarray(v), features, result)
        return result

    ones_response = raw(np.ones((features.shape[0], 1)))[:, 0]
    in_scale, out_scale = normalization_scales(ones_response, normalization, False)
    out = within_range(lambda v: out_scale[:, None] * raw(v * in_scale[:, None]), values, np)
    return out[:, 0] if flat else out
