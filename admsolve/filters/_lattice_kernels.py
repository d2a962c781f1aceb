"""The Numba kernels of :mod:`admsolve.filters.lattice` (the permutohedral lattice): hash tables, the
lattice construction, the splat-blur-slice filter, the exact O(N^2) filter, and the filter of a
labeling's indicator vectors read at each pixel's own label.

Private, and imported on first use only: importing Numba costs a few tenths of a second, which
``import admsolve`` does not pay.
"""

import numpy as np
from numba import njit

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


@njit(nogil=True, cache=True)
def _disagreement(vertices, barycentric, neighbours, labels, n_labels, in_scale, out_scale, reverse, out):
    """out[p] = sum_q F[p, q] [labels[q] != labels[p]], F = diag(out_scale) alpha S^T B S diag(in_scale):
    the filter of the indicator of the labels other than p's, read at p. Each point splats into its own
    label's channel only (O(N d)), the blur runs on the (M, K) lattice values, and the slice reads the
    total over the labels minus p's own: O((N + M K) d) instead of O((N + M) d K)."""
    n, dp1 = vertices.shape
    m = neighbours.shape[1]
    current = np.zeros((m + 1, n_labels))
    scratch = np.zeros((m + 1, n_labels))
    for p in range(n):
        s = in_scale[p]
        label = labels[p]
        for r in range(dp1):
            current[vertices[p, r], label] += barycentric[p, r] * s
    for step in range(dp1):
        j = dp1 - 1 - step if reverse else step
        for index in range(m):
            a = neighbours[j, index, 0]
            b = neighbours[j, index, 1]
            for k in range(n_labels):
                scratch[index, k] = current[index, k] + 0.5 * (current[a, k] + current[b, k])
        current, scratch = scratch, current
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
