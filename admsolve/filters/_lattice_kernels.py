"""The Numba kernels of :mod:`admsolve.filters.lattice` (the permutohedral lattice): hash tables, the
lattice construction, the splat-blur-slice filter and its stages, the exact O(N^2) filter, and the filter of a
labeling's indicator vectors read at each pixel's own label.

Private, and imported on first use only: importing Numba costs a few tenths of a second, which
``import admsolve`` does not pay.
"""

import numpy as np
from numba import njit

# Hash tables: open addressing with linear probing in a flat int32 array of entry indices (-1 for an
# empty slot), the keys stored as the rows of a separate array; the size is a power of two and the
# table is kept at most half full. The key being looked up is written in the spare row after the last
# entry, so that it is compared row against row.
#
# The main loop (_scan) never reallocates an array: an array reassigned inside a Numba loop costs an
# atomic reference count update at every use, which made the construction twice as slow. It stops
# when a table could fill up, and _build_lattice grows the arrays and resumes it.


@njit(nogil=True, cache=True)
def _row_hash(keys, row, width):
    """Hash of the int32 key keys[row, :width] (multiplicative, then the high bits mixed down)."""
    h = np.uint64(0)
    for i in range(width):
        h = (h + np.uint64(np.int64(keys[row, i]) & 0xFFFFFFFF)) * np.uint64(0x9E3779B97F4A7C15)
    return h ^ (h >> np.uint64(29))


@njit(inline="always")
def _probe(keys, row, width, table, mask):
    """Linear probing for the key keys[row, :width] in `table` (indices of rows of `keys`, -1 for an
    empty slot): (index of the equal row, its slot), or (-1, the empty slot where it would go)."""
    slot = _row_hash(keys, row, width) & mask
    while True:
        index = table[slot]
        if index < 0:
            return index, slot
        hit = True
        for i in range(width):
            if keys[index, i] != keys[row, i]:
                hit = False
                break
        if hit:
            return index, slot
        slot = (slot + np.uint64(1)) & mask


@njit(nogil=True, cache=True)
def _rehash(keys, count, width, size):
    """A new table of `size` slots holding the entries keys[:count]."""
    table = np.full(size, -1, dtype=np.int32)
    mask = np.uint64(size - 1)
    for j in range(count):
        slot = _row_hash(keys, j, width) & mask
        while table[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = j
    return table


@njit(nogil=True, cache=True)
def _grow(rows, count):
    """`rows` with twice as many rows, the first `count` copied (element by element: a slice assignment
    compiles its shape-mismatch error message, seconds of a first run's compilation)."""
    grown = np.empty((2 * rows.shape[0], rows.shape[1]), dtype=rows.dtype)
    for i in range(count):
        for j in range(rows.shape[1]):
            grown[i, j] = rows[i, j]
    return grown


@njit(nogil=True, cache=True)
def _scan(token, features, start, state, scale, canonical, point_keys, point_table, simplex_keys, simplex_points,
          simplex_table, vertices, barycentric, elevated, rem0, rank, bary):
    """Locate the points features[start:] in the lattice until done or a table could fill up; returns
    the first point not done. ``state`` holds the number of lattice points, of simplices, and the
    simplex of the previous point. The dimension d is ``token.ndim``: a constant of the compiled code
    (one compilation per d), so that the loops over the coordinates are unrolled (40 % faster)."""
    n = features.shape[0]
    d = token.ndim
    dp1 = d + 1
    down = np.float32(1.0) / np.float32(dp1)
    up = np.float32(dp1)
    n_points, n_simplices, s = state[0], state[1], state[2]
    point_mask = np.uint64(point_table.shape[0] - 1)
    simplex_mask = np.uint64(simplex_table.shape[0] - 1)
    p = start
    while p < n:
        # Room for one more simplex and d + 1 more points, their spare rows, tables at most half full.
        if (n_points + dp1 + 1 >= point_keys.shape[0] or 2 * (n_points + dp1) > point_table.shape[0]
                or n_simplices + 2 >= simplex_keys.shape[0] or 2 * (n_simplices + 1) > simplex_table.shape[0]):
            break
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
        for r in range(dp1):
            barycentric[p, r] = bary[r]
        # The simplex, keyed by its remainder-0 vertex and the ranks: often the previous point's, else
        # looked up, else new, with its d+1 lattice points looked up or added.
        row = n_simplices  # the spare row
        for i in range(d):
            simplex_keys[row, i] = np.int32(rem0[i])
            simplex_keys[row, d + i] = rank[i]
        same = s >= 0
        if same:
            for i in range(2 * d):
                if simplex_keys[s, i] != simplex_keys[row, i]:
                    same = False
                    break
        if not same:
            s, slot = _probe(simplex_keys, row, 2 * d, simplex_table, simplex_mask)
            if s < 0:
                for r in range(dp1):
                    key_row = n_points  # the spare row
                    for i in range(d):
                        point_keys[key_row, i] = np.int32(rem0[i]) + canonical[r, rank[i]]
                    index, point_slot = _probe(point_keys, key_row, d, point_table, point_mask)
                    if index < 0:
                        index = n_points
                        point_table[point_slot] = index
                        n_points += 1
                    simplex_points[row, r] = index
                s = row
                simplex_table[slot] = s
                n_simplices += 1
        for r in range(dp1):
            vertices[p, r] = simplex_points[s, r]
        p += 1
    state[0], state[1], state[2] = n_points, n_simplices, s
    return p


@njit(nogil=True, cache=True)
def _blur_neighbours(point_keys, point_table, m, d):
    """(d+1, M, 2) indices of the two neighbours of each lattice point along each blur direction, M
    where none: along direction j a point moves by +-(d+1) in coordinate j and -+1 in the others
    (direction d changes only the implicit coordinate d). point_keys[m] is the spare row."""
    dp1 = d + 1
    mask = np.uint64(point_table.shape[0] - 1)
    neighbours = np.empty((dp1, m, 2), dtype=np.int32)
    for j in range(dp1):
        for index in range(m):
            for side in range(2):
                sign = 1 if side == 0 else -1
                for k in range(d):
                    point_keys[m, k] = point_keys[index, k] - sign
                if j < d:
                    point_keys[m, j] = point_keys[index, j] + sign * d
                other, _ = _probe(point_keys, m, d, point_table, mask)
                neighbours[j, index, side] = m if other < 0 else other
    return neighbours


@njit(nogil=True, cache=True)
def _build_lattice(features, token):
    """The lattice of (N, d) float32 features; `token` is any array with d dimensions (see :func:`_scan`).

    Returns ``(vertices, barycentric, keys, neighbours)``: (N, d+1) int32 lattice point of each
    vertex of the simplex enclosing each pixel, (N, d+1) float64 barycentric weights (summing to 1),
    (M, d) int32 coordinates of the M lattice points (the last coordinate is minus the sum of the
    others), and (d+1, M, 2) int32 indices of the two neighbours of each point along each blur
    direction, M where the neighbour does not exist.

    The simplex search runs in float32 with pydensecrf's operations and rounding, so that points on
    (or within float32 rounding of) a simplex boundary land on the same lattice points.
    """
    n, d = features.shape
    dp1 = d + 1
    # Scale so that the blur (taps 1/2, 1, 1/2 along each of the d+1 directions) matches a
    # unit-variance Gaussian: the variance of the blur is 2/3 (d+1)^2 in lattice units.
    inv_std = np.float32(np.sqrt(2.0 / 3.0) * dp1)
    scale = np.empty(d, dtype=np.float32)
    for i in range(d):
        scale[i] = np.float32(1.0 / np.sqrt((i + 1.0) * (i + 2.0)) * np.float64(inv_std))
    # canonical[r, i]: coordinate i of the remainder-r vertex of the canonical simplex.
    canonical = np.empty((dp1, dp1), dtype=np.int32)
    for r in range(dp1):
        for i in range(dp1):
            canonical[r, i] = r if i <= d - r else r - dp1
    point_keys = np.empty((1024, d), dtype=np.int32)
    point_table = np.full(2048, -1, dtype=np.int32)
    simplex_keys = np.empty((1024, 2 * d), dtype=np.int32)
    simplex_points = np.empty((1024, dp1), dtype=np.int32)
    simplex_table = np.full(2048, -1, dtype=np.int32)
    vertices = np.empty((n, dp1), dtype=np.int32)
    barycentric = np.empty((n, dp1))
    elevated = np.empty(dp1, dtype=np.float32)
    rem0 = np.empty(dp1, dtype=np.float32)
    rank = np.empty(dp1, dtype=np.int64)
    bary = np.empty(dp1 + 1, dtype=np.float32)
    state = np.array([0, 0, -1])
    p = np.int64(0)  # not a literal 0, for which Numba would compile _scan a second time
    while True:
        p = _scan(token, features, p, state, scale, canonical, point_keys, point_table, simplex_keys, simplex_points,
                  simplex_table, vertices, barycentric, elevated, rem0, rank, bary)
        if p == n:
            break
        n_points, n_simplices = state[0], state[1]
        if n_points + dp1 + 1 >= point_keys.shape[0]:
            point_keys = _grow(point_keys, n_points)
        if 2 * (n_points + dp1) > point_table.shape[0]:
            point_table = _rehash(point_keys, n_points, d, 2 * point_table.shape[0])
        if n_simplices + 2 >= simplex_keys.shape[0]:
            simplex_keys = _grow(simplex_keys, n_simplices)
            simplex_points = _grow(simplex_points, n_simplices)
        if 2 * (n_simplices + 1) > simplex_table.shape[0]:
            simplex_table = _rehash(simplex_keys, n_simplices, 2 * d, 2 * simplex_table.shape[0])
    m = state[0]
    if m + 1 >= point_keys.shape[0]:
        point_keys = _grow(point_keys, m)
    neighbours = _blur_neighbours(point_keys, point_table, m, d)
    return vertices, barycentric, point_keys[:m].copy(), neighbours


@njit(nogil=True, cache=True)
def _ones_response(vertices, barycentric, neighbours, out):
    """out = alpha S^T B S 1, the unnormalised filter of ones: :func:`_lattice_filter` on one channel of
    ones with unit scales, the same operations (so the same numbers), without the channel loops."""
    n, dp1 = vertices.shape
    m = neighbours.shape[1]
    current = np.zeros(m + 1)
    scratch = np.zeros(m + 1)
    for p in range(n):
        for r in range(dp1):
            current[vertices[p, r]] += barycentric[p, r]
    for j in range(dp1):
        for index in range(m):
            scratch[index] = current[index] + 0.5 * (current[neighbours[j, index, 0]] + current[neighbours[j, index, 1]])
        current, scratch = scratch, current
    alpha = 1.0 / (1.0 + 2.0 ** (1 - dp1))
    for p in range(n):
        value = 0.0
        for r in range(dp1):
            value += barycentric[p, r] * current[vertices[p, r]]
        out[p] = alpha * value


# The filter's three stages, shared with the dense loss (admsolve.training.losses), which splats once for
# its forward and backward and reads its terms straight from the slices.


@njit(nogil=True, cache=True)
def splat(vertices, barycentric, values, in_scale, n_lattice_points):
    """(M + 1, C) float64 lattice values S diag(in_scale) values of the (N, C) `values`: each point's
    row times its scale, spread over its simplex's vertices with its barycentric weights. Row M, the
    value of every missing neighbour, stays zero."""
    n, dp1 = vertices.shape
    c = values.shape[1]
    lattice = np.zeros((n_lattice_points + 1, c))
    row = np.empty(c)
    for p in range(n):
        s = in_scale[p]
        for k in range(c):
            row[k] = s * values[p, k]
        for r in range(dp1):
            v = vertices[p, r]
            w = barycentric[p, r]
            for k in range(c):
                lattice[v, k] += w * row[k]
    return lattice


@njit(nogil=True, cache=True)
def blur(neighbours, lattice, channels, reverse):
    """B of the first `channels` columns of the (M + 1, C) lattice values, a new array: along the
    directions 0..d, each point plus half of its two neighbours (d..0 when `reverse`: B^T)."""
    dp1, m = neighbours.shape[0], neighbours.shape[1]
    current = lattice[:, :channels].copy()
    scratch = np.zeros_like(current)
    for step in range(dp1):
        j = dp1 - 1 - step if reverse else step
        for index in range(m):
            a = neighbours[j, index, 0]
            b = neighbours[j, index, 1]
            for k in range(channels):
                scratch[index, k] = current[index, k] + 0.5 * (current[a, k] + current[b, k])
        current, scratch = scratch, current
    return current


@njit(inline="always")
def slice_row(vertices, barycentric, lattice, p, row):
    """row[k] = (S^T lattice)[p, k] for k < row.size: point p's barycentric sum of its vertices' values."""
    for k in range(row.size):
        row[k] = 0.0
    for r in range(vertices.shape[1]):
        v = vertices[p, r]
        w = barycentric[p, r]
        for k in range(row.size):
            row[k] += w * lattice[v, k]


@njit(nogil=True, cache=True)
def _lattice_filter(vertices, barycentric, neighbours, values, in_scale, out_scale, reverse, out):
    """out = diag(out_scale) alpha S^T B S diag(in_scale) values.

    Splat with the barycentric weights (S), blur along the d+1 directions 0..d (B; d..0 when
    `reverse`, which gives the transpose), slice with the same weights (S^T), times the constant
    alpha = 1 / (1 + 2^-d) of Adams et al. (the weight a lattice point gets back from itself).
    """
    n, dp1 = vertices.shape
    c = values.shape[1]
    blurred = blur(neighbours, splat(vertices, barycentric, values, in_scale, neighbours.shape[1]), c, reverse)
    alpha = 1.0 / (1.0 + 2.0 ** (1 - dp1))
    row = np.empty(c)
    for p in range(n):
        slice_row(vertices, barycentric, blurred, p, row)
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


@njit(nogil=True, cache=True)
def _disagreement(vertices, barycentric, neighbours, labels, n_labels, in_scale, out_scale, reverse, out):
    """out[p] = sum_q F[p, q] [labels[q] != labels[p]], F = diag(out_scale) alpha S^T B S diag(in_scale):
    the filter of the indicator of the labels other than p's, read at p. Each point splats into its own
    label's channel only (O(N d)), the blur runs on the (M, K) lattice values, and the slice reads the
    total over the labels minus p's own: O((N + M K) d) instead of O((N + M) d K)."""
    n, dp1 = vertices.shape
    m = neighbours.shape[1]
    splatted = np.zeros((m + 1, n_labels))
    for p in range(n):
        s = in_scale[p]
        label = labels[p]
        for r in range(dp1):
            splatted[vertices[p, r], label] += barycentric[p, r] * s
    current = blur(neighbours, splatted, n_labels, reverse)
    others = np.empty(m + 1)  # per lattice point: the total over the labels (row m: 0)
    for index in range(m + 1):
        total = 0.0
        for k in range(n_labels):
            total += current[index, k]
        others[index] = total
    alpha = 1.0 / (1.0 + 2.0 ** (1 - dp1))
    for p in range(n):
        label = labels[p]
        value = 0.0
        for r in range(dp1):
            v = vertices[p, r]
            value += barycentric[p, r] * (others[v] - current[v, label])
        out[p] = alpha * out_scale[p] * value


@njit(nogil=True, cache=True)
def _total(vertices, barycentric, neighbours, in_scale, out_scale, reverse):
    """sum_p (diag(out_scale) alpha S^T B S in_scale)_p, the sum of the filter of ones, as the bilinear
    form alpha (S out_scale)^T B (S in_scale): two splats, one blur, a dot product over the lattice (no
    slice)."""
    n, dp1 = vertices.shape
    m = neighbours.shape[1]
    current = np.zeros(m + 1)
    scratch = np.zeros(m + 1)
    outer = np.zeros(m + 1)
    for p in range(n):
        for r in range(dp1):
            v = vertices[p, r]
            current[v] += barycentric[p, r] * in_scale[p]
            outer[v] += barycentric[p, r] * out_scale[p]
    for step in range(dp1):
        j = dp1 - 1 - step if reverse else step
        for index in range(m):
            scratch[index] = current[index] + 0.5 * (current[neighbours[j, index, 0]] + current[neighbours[j, index, 1]])
        current, scratch = scratch, current
    total = 0.0
    for index in range(m):
        total += outer[index] * current[index]
    return total / (1.0 + 2.0 ** (1 - dp1))
