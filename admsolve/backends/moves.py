"""Graph construction shared by the graph-cut backends: the binary energy of one alpha-expansion
move (Boykov, Veksler & Zabih 2001) and of the exact two-label problem, as terminal and edge
capacities on the grid. Convention: a node on the sink side of the cut takes y = 1."""

import numpy as np
from numba import njit

from . import check_cancelled
from ._gridflow import FORWARD_OFFSETS, SINK, resume_max_flow


@njit(nogil=True, cache=True)
def _transpose_unary(unary, out):
    """out[l, y, x] = unary[y, x, l]; compiled, as numpy's strided copy is ~10x slower."""
    height, width, n_labels = unary.shape
    for y in range(height):
        for x in range(width):
            for label in range(n_labels):
                out[label, y, x] = unary[y, x, label]


def label_major_unary(problem):
    """The unaries as a contiguous (K, H, W) array, so each label's costs are one block."""
    out = np.empty((problem.n_labels, *problem.shape))
    _transpose_unary(problem.unary, out)
    return out


@njit(nogil=True, cache=True)
def pin_bound(unary, scaled):
    """A terminal capacity no expansion move can afford to cut, from label-major `unary` (K, H, W) and the
    weights times lambda (D, H, W): twice the sum of the pixels' unary ranges (max - min over the labels)
    plus three times the weights, which bound the sum of every other capacity of a move; 1 when that is 0
    (relative to the energy: no absolute offset lost in rounding)."""
    n_labels, height, width = unary.shape
    ranges = 0.0
    for y in range(height):
        for x in range(width):
            low = high = unary[0, y, x]
            for label in range(1, n_labels):
                low = min(low, unary[label, y, x])
                high = max(high, unary[label, y, x])
            ranges += high - low
    bound = ranges + 3.0 * scaled.sum()
    return 2.0 * bound if bound > 0 else 1.0


def pin_capacity(problem, unary):
    """:func:`pin_bound` of `problem`, whose label-major unaries (label_major_unary) are `unary`."""
    return pin_bound(unary, problem.lam * problem.weights)


@njit(inline="always")
def _edge_terms(w, la, lb, alpha):
    """The edge a -> b (a first in raster order) of an expansion move, split as described in
    expansion_capacities: (its capacity, its share of a's terminal cost, its share of b's)."""
    a_moves_alone = w if lb != alpha else 0.0  # E(1, 0)
    b_moves_alone = w if la != alpha else 0.0  # E(0, 1)
    cut_now = w if la != lb else 0.0  # E(0, 0)
    return b_moves_alone + a_moves_alone - cut_now, a_moves_alone - cut_now, -a_moves_alone


@njit(inline="always")
def _move_row(unary, weights, labels, alpha, y, start, stop, edges, offset, delta):
    """Columns start:stop of row y of alpha's expansion move from `labels`: writes the capacities of the
    forward edges p -> p + OFFSETS[d] of these pixels (those inside the image) to ``edges[d, offset + x]``,
    and ``delta[x]`` = cost(y_p = 1) - cost(y_p = 0) before any pin.

    The edge terms split as expansion_capacities describes; a pixel's delta adds, in this order, the shares
    of its backward edges (their first ends in raster order: up-left, up, up-right, left), its unary
    change, then the shares of its own forward edges in the order of OFFSETS. Every window of the grid thus
    gets bit for bit the values of the whole, and each loop runs over a row without a dependence from one
    pixel to the next (Numba vectorises them)."""
    n_directions, height, width = weights.shape
    left, right = max(start, 1), min(stop, width - 1)  # the pixels with a left / a right neighbour
    for x in range(start, stop):
        delta[x] = 0.0
    if y > 0:
        if n_directions == 4:
            for x in range(left, stop):
                delta[x] += _edge_terms(weights[2, y - 1, x - 1], labels[y - 1, x - 1], labels[y, x], alpha)[2]
        for x in range(start, stop):
            delta[x] += _edge_terms(weights[1, y - 1, x], labels[y - 1, x], labels[y, x], alpha)[2]
        if n_directions == 4:
            for x in range(start, right):
                delta[x] += _edge_terms(weights[3, y - 1, x + 1], labels[y - 1, x + 1], labels[y, x], alpha)[2]
    for x in range(left, stop):
        delta[x] += _edge_terms(weights[0, y, x - 1], labels[y, x - 1], labels[y, x], alpha)[2]
    for x in range(start, stop):
        delta[x] = unary[alpha, y, x] - unary[labels[y, x], y, x] + delta[x]
    for x in range(start, right):
        edges[0, offset + x], share, _ = _edge_terms(weights[0, y, x], labels[y, x], labels[y, x + 1], alpha)
        delta[x] += share
    if y + 1 < height:
        for x in range(start, stop):
            edges[1, offset + x], share, _ = _edge_terms(weights[1, y, x], labels[y, x], labels[y + 1, x], alpha)
            delta[x] += share
        if n_directions == 4:
            for x in range(start, right):
                edges[2, offset + x], share, _ = _edge_terms(weights[2, y, x], labels[y, x], labels[y + 1, x + 1],
                                                             alpha)
                delta[x] += share
            for x in range(left, stop):
                edges[3, offset + x], share, _ = _edge_terms(weights[3, y, x], labels[y, x], labels[y + 1, x - 1],
                                                             alpha)
                delta[x] += share


@njit(inline="always")
def _terminals(delta, pinned, label, alpha, pin_cap):
    """(source, sink) capacity of a pixel whose cost(y = 1) - cost(y = 0) is `delta`; a `pinned` pixel not
    yet at alpha gets `pin_cap` more source capacity (it must keep its label)."""
    source = max(delta, 0.0)
    if pinned and label != alpha:
        source += pin_cap
    return source, max(-delta, 0.0)


@njit(nogil=True, cache=True)
def expansion_capacities(unary, weights, labels, pinned, pin_cap, alpha, source_cap, sink_cap, edge_cap, delta):
    """Capacities of the alpha-expansion move from `labels`: y_p = 1 moves p to `alpha`.

    unary : (K, H, W); weights : (D, H, W), already multiplied by lambda; pinned : (H, W) bool, the
    seeded pixels, pinned to y = 0 (unless already `alpha`) by the extra source capacity `pin_cap`;
    delta : (W,) scratch. Writes the (H, W) terminal capacities and the (D, H, W) capacities of the
    directed edges p -> p + OFFSETS[d] (the reverse edges have none; entries of edges leaving the image
    are not written), and returns the cost of y = 0 everywhere: the move's energy change is maxflow - that.
    Edge a -> b decomposes E(y_a, y_b) with E(0,0) = w[l_a != l_b], E(0,1) = w[l_a != alpha],
    E(1,0) = w[l_b != alpha], E(1,1) = 0 (Kolmogorov & Zabih 2004) into its capacity E(0,1) + E(1,0) -
    E(0,0) and shares of a's and b's terminal costs (_edge_terms; the order they are summed in: _move_row).
    """
    n_directions, height, width = weights.shape
    edges = edge_cap.reshape((n_directions, height * width))
    current_cost = 0.0
    for y in range(height):
        _move_row(unary, weights, labels, alpha, y, 0, width, edges, y * width, delta)
        for x in range(width):
            source_cap[y, x], sink_cap[y, x] = _terminals(delta[x], pinned[y, x], labels[y, x], alpha, pin_cap)
            current_cost += sink_cap[y, x]
    return current_cost


def binary_capacities(problem):
    """Capacities of the exact two-label problem, y_p = label of p.

    Returns ``(source_cap, sink_cap, edge_cap)``; every edge has capacity ``edge_cap`` both ways.
    """
    scaled_weights = problem.lam * problem.weights
    delta = problem.unary[..., 1] - problem.unary[..., 0]
    source_cap = np.maximum(delta, 0.0)
    sink_cap = np.maximum(-delta, 0.0)
    big = np.abs(delta).sum() + 2.0 * scaled_weights.sum()
    big = 2.0 * big if big > 0 else 1.0
    source_cap[problem.seeds == 0] += big
    sink_cap[problem.seeds == 1] += big
    return source_cap, sink_cap, scaled_weights


@njit(nogil=True, cache=True)
def improves(flow, current_cost, energy_scale):
    """True if a move whose cut costs `flow`, against `current_cost` for keeping the labels, strictly
    lowers the energy beyond rounding, relative to `energy_scale` (the problem's ``energy_scale``, a
    bound of |E|): no absolute floor, so that the same moves are accepted at any scale of the energy.
    With `current_cost` = 0, `flow` is the energy change."""
    return flow < current_cost - 1e-10 * abs(energy_scale)


@njit(nogil=True, cache=True)
def _copy(source, target):
    """target[...] = source for (H, W) arrays; a slice assignment would add seconds of JIT compile."""
    height, width = source.shape
    for y in range(height):
        for x in range(width):
            target[y, x] = source[y, x]


@njit(nogil=True, cache=True)
def _update_residuals(unary, weights, snapshot, labels, alpha, graph):
    """Turn `graph`, the residual graph left by the max-flow of alpha's expansion move from the labels
    `snapshot`, into a residual graph of the move from `labels` (Kohli & Torr 2007), and set
    `snapshot` to `labels`.

    Only the unary terms of pixels whose label changed and the edges at those pixels are touched;
    the rest of the graph, and the flow it carries, stays exactly as it was. A terminal capacity
    moves by its change. An edge keeps its flow f if its new capacity c allows, else the flow drops to
    c and the f - c it no longer carries goes back to the terminals of its ends (which
    reparameterises the move's energy by a constant only). Seeded pixels never change label, so their
    pins stay.
    """
    n_directions, height, width = weights.shape
    cap, tr = graph[3], graph[4]
    for y in range(height):
        for x in range(width):
            old = snapshot[y, x]
            new = labels[y, x]
            if new == old:
                continue
            p = y * width + x
            tr[p] += unary[old, y, x] - unary[new, y, x]
            for k in range(2 * n_directions):
                d = k % n_directions
                dy, dx = FORWARD_OFFSETS[d]
                ay, ax = (y, x) if k < n_directions else (y - dy, x - dx)  # edge a -> b = a + offset
                by, bx = ay + dy, ax + dx
                if not (0 <= ay < height and 0 <= ax < width and 0 <= by < height and 0 <= bx < width):
                    continue
                if k >= n_directions and snapshot[ay, ax] != labels[ay, ax]:  # done from a
                    continue
                w = weights[d, ay, ax]
                old_cap, old_a, old_b = _edge_terms(w, snapshot[ay, ax], snapshot[by, bx], alpha)
                new_cap, new_a, new_b = _edge_terms(w, labels[ay, ax], labels[by, bx], alpha)
                a, b = ay * width + ax, by * width + bx
                tr[a] += new_a - old_a
                tr[b] += new_b - old_b
                if new_cap == old_cap:
                    continue
                flow = cap[n_directions + d, b]  # the reverse edge has no capacity of its own
                if new_cap >= flow:
                    cap[d, a] = new_cap - flow
                else:
                    cap[d, a] = 0.0
                    cap[n_directions + d, b] = new_cap
                    tr[a] += flow - new_cap
                    tr[b] -= flow - new_cap
    _copy(labels, snapshot)


@njit(nogil=True, cache=True)
def _energy_change(unary, weights, labels, alpha, tree):
    """E(labels with the sink side of `tree` moved to alpha) - E(labels)."""
    n_directions, height, width = weights.shape
    change = 0.0
    for p in range(height * width):
        if tree[p] != SINK:
            continue
        y, x = divmod(p, width)
        lp = labels[y, x]
        if lp == alpha:
            continue
        change += unary[alpha, y, x] - unary[lp, y, x]
        for k in range(2 * n_directions):
            d = k % n_directions
            dy, dx = FORWARD_OFFSETS[d]
            sign = 1 if k < n_directions else -1
            qy, qx = y + sign * dy, x + sign * dx
            if not (0 <= qy < height and 0 <= qx < width):
                continue
            q = qy * width + qx
            lq = labels[qy, qx]
            q_moves = tree[q] == SINK and lq != alpha
            if q_moves and q < p:  # an edge between two moving pixels counts once
                continue
            w = weights[d, y, x] if k < n_directions else weights[d, qy, qx]
            cut_after = 0.0 if q_moves or lq == alpha else w
            cut_before = w if lp != lq else 0.0
            change += cut_after - cut_before
    return change


@njit(nogil=True, cache=True)
def expand_in_place(unary, weights, labels, pinned, pin_cap, alpha, energy_scale, delta, graph, snapshot, fresh):
    """The alpha-expansion move from `labels`, solved on the Numba max-flow and applied to `labels`
    if it lowers the energy (beyond improves' rounding margin); returns True if so.

    `graph` is alpha's own residual graph (GridMaxflow.residual_graphs) and `snapshot` (H, W) the
    labels its last move was made from. If `fresh`, the graph is new: the capacities go straight into
    its arrays (_fresh_graph), with no copy between building the move and solving it. Otherwise
    the graph still holds the flow of alpha's last move, and only what the label changes since then
    alter is updated (_update_residuals): in later sweeps few labels change, so max-flow has little
    left to do. The other arguments are those of expansion_capacities (`delta` a buffer) and
    `energy_scale` that of improves.
    """
    if fresh:
        graph[3][:] = 0.0  # (no reverse capacities, and nothing on the edges leaving the image)
        _fresh_graph(unary, weights, labels, pinned, pin_cap, alpha, delta, graph[3], graph[4], False)
        resume_max_flow(graph)
        _copy(labels, snapshot)
    else:
        _update_residuals(unary, weights, snapshot, labels, alpha, graph)
        resume_max_flow(graph)
    return _apply_cut(unary, weights, labels, alpha, energy_scale, graph[5])


@njit(nogil=True, cache=True)
def _apply_cut(unary, weights, labels, alpha, energy_scale, tree):
    """Move the sink side of `tree` to alpha if that lowers the energy; True if so. (The flow value of a
    resumed graph is off by the reparameterisation, so a move is judged by the energy change of its cut.)"""
    if not improves(_energy_change(unary, weights, labels, alpha, tree), 0.0, energy_scale):
        return False
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            if tree[y * width + x] == SINK:
                labels[y, x] = alpha
    return True


@njit(inline="always")
def _fresh_row(unary, weights, labels, pinned, pin_cap, alpha, y, start, stop, delta, cap, tr):
    """Columns start:stop of row y of _fresh_graph's graph: the forward rows of `cap` and `tr`."""
    width = labels.shape[1]
    _move_row(unary, weights, labels, alpha, y, start, stop, cap, y * width, delta)
    for x in range(start, stop):
        source, sink = _terminals(delta[x], pinned[y, x], labels[y, x], alpha, pin_cap)
        tr[y * width + x] = source - sink


@njit(nogil=True, cache=True)
def _fresh_graph(unary, weights, labels, pinned, pin_cap, alpha, delta, cap, tr, clear_reverse):
    """Write into (cap, tr) the graph of alpha's expansion move from `labels` before any flow: the
    forward capacities, none on the reverse edges (set to 0 if `clear_reverse`, else already 0), tr =
    source - sink capacity (as max_flow sets it). Entries of edges leaving the image are not written;
    `delta` (W,) is scratch."""
    n_directions, height, width = weights.shape
    for y in range(height):
        _fresh_row(unary, weights, labels, pinned, pin_cap, alpha, y, 0, width, delta, cap, tr)
    if clear_reverse:
        for k in range(n_directions, 2 * n_directions):
            for p in range(height * width):
                cap[k, p] = 0.0


#: _refresh_graph rebuilds the whole graph instead of the pixels near changed labels when more than this
#: share of the pixels changed.
REFRESH_SHARE = 1 / 16


@njit(nogil=True, cache=True)
def _refresh_graph(unary, weights, snapshot, labels, pinned, pin_cap, alpha, delta, cap, tr):
    """Turn (cap, tr), _fresh_graph's graph of alpha's move from `snapshot`, into that from `labels`,
    bit for bit, rewriting only the entries a changed label enters: those of the pixel, of its left
    neighbour and of the three above it (the capacities of its edges and its backward neighbours'
    terminal shares); the whole graph when more than REFRESH_SHARE of the pixels changed."""
    height, width = labels.shape
    changed = 0
    for y in range(height):
        for x in range(width):
            changed += snapshot[y, x] != labels[y, x]
    if changed > REFRESH_SHARE * height * width:
        _fresh_graph(unary, weights, labels, pinned, pin_cap, alpha, delta, cap, tr, False)
        return
    for y in range(height):
        x = 0
        while x < width:
            if snapshot[y, x] == labels[y, x]:
                x += 1
                continue
            stop = x + 1  # a run of changed labels, x:stop
            while stop < width and snapshot[y, stop] != labels[y, stop]:
                stop += 1
            for row in range(max(y - 1, 0), y + 1):
                _fresh_row(unary, weights, labels, pinned, pin_cap, alpha, row, max(x - 1, 0), min(stop + 1, width),
                           delta, cap, tr)
            x = stop


@njit(nogil=True, cache=True)
def _changed_entries(cap, tr, fresh_cap, fresh_tr, budget, index_scratch, value_scratch):
    """Where the residual graph (cap, tr) differs from the fresh graph (fresh_cap, fresh_tr): indices into
    the rows of cap followed by tr, flattened, and the residual values there; (empty, empty, False) if
    there are more than `budget`. One pass that writes them into the scratch arrays while they fit (a
    move usually changes fewer entries than there are pixels), a second pass only when they did not."""
    rows, n = cap.shape
    room = index_scratch.size
    count = 0
    for k in range(rows + 1):
        for p in range(n):
            changed = cap[k, p] != fresh_cap[k, p] if k < rows else tr[p] != fresh_tr[p]
            if changed:
                if count < room:
                    index_scratch[count] = k * n + p
                    value_scratch[count] = cap[k, p] if k < rows else tr[p]
                count += 1
    if count > budget:
        return np.empty(0, np.int64), np.empty(0), False
    index, value = np.empty(count, np.int64), np.empty(count)
    if count <= room:
        for i in range(count):
            index[i], value[i] = index_scratch[i], value_scratch[i]
        return index, value, True
    i = 0
    for k in range(rows):
        for p in range(n):
            if cap[k, p] != fresh_cap[k, p]:
                index[i], value[i] = k * n + p, cap[k, p]
                i += 1
    for p in range(n):
        if tr[p] != fresh_tr[p]:
            index[i], value[i] = rows * n + p, tr[p]
            i += 1
    return index, value, True


@njit(nogil=True, cache=True)
def expand_sparse(unary, weights, labels, pinned, pin_cap, alpha, energy_scale, delta, graph, fresh_cap, fresh_tr,
                  index_scratch, value_scratch, snapshot, index, value, resume, budget):
    """expand_in_place for the lean layout: the residual graph of alpha's last move is kept as the
    entries (`index`, `value`) where it differs from that move's fresh graph (made from the labels
    `snapshot`), and rebuilt from them exactly in the one working `graph` when `resume`; otherwise the
    move starts afresh. `fresh_cap`, `fresh_tr` are scratch arrays like graph's cap and tr, all zero
    at the entries of edges leaving the image and on the reverse edges: they take this move's fresh
    graph, copied from the rebuild and brought to the move's labels (_refresh_graph); `index_scratch`,
    `value_scratch` (int64, float64, any length) hold the entries while they are found. Returns (moved,
    index, value, kept): the entries of this move's residual graph, kept unless more than `budget` (then
    alpha's next move starts afresh; a negative budget: none kept, none looked for)."""
    n_directions = weights.shape[0]
    cap, tr = graph[3], graph[4]
    _fresh_graph(unary, weights, snapshot if resume else labels, pinned, pin_cap, alpha, delta, cap, tr, True)
    if budget >= 0:  # this move's fresh graph, to compare its residual with
        _copy(cap[:n_directions], fresh_cap[:n_directions])
        for p in range(tr.shape[0]):
            fresh_tr[p] = tr[p]
        if resume:
            _refresh_graph(unary, weights, snapshot, labels, pinned, pin_cap, alpha, delta, fresh_cap, fresh_tr)
    if resume:
        rows, n = cap.shape
        for i in range(index.size):
            j = index[i]
            if j < rows * n:
                cap[j // n, j % n] = value[i]
            else:
                tr[j - rows * n] = value[i]
        _update_residuals(unary, weights, snapshot, labels, alpha, graph)
    else:
        _copy(labels, snapshot)
    resume_max_flow(graph)
    if budget < 0:  # nothing is to be kept
        index, value, kept = np.empty(0, np.int64), np.empty(0), False
    else:
        index, value, kept = _changed_entries(cap, tr, fresh_cap, fresh_tr, budget, index_scratch, value_scratch)
    return _apply_cut(unary, weights, labels, alpha, energy_scale, graph[5]), index, value, kept


def move_labels(problem, labels):
    """The labels a move-making backend may move to: all of them, or the checked subset `labels`."""
    if labels is None:
        return list(range(problem.n_labels))
    subset = np.asarray(labels)
    if subset.ndim != 1 or subset.size == 0 or not np.issubdtype(subset.dtype, np.integer):
        raise ValueError(f"labels: expected a non-empty sequence of label indices, got {labels!r}")
    if subset.min() < 0 or subset.max() >= problem.n_labels or np.unique(subset).size != subset.size:
        raise ValueError(f"labels: expected distinct values in [0, {problem.n_labels}), got {subset.tolist()}")
    return sorted(subset.tolist())


#: The lean layout keeps the changed entries of the labels' residual graphs up to this many times the
#: entries of one whole graph ((2 D + 1) per pixel), 16 bytes each; beyond, a label's next move starts afresh.
LEAN_BUDGET = 2


@njit(nogil=True, cache=True)
def grid_energy(unary, weights, labels):
    """The grid CRF's energy of `labels` from label-major `unary` (K, H, W) and the weights already
    scaled by lambda (D, H, W): the reference's formula (GridCRF.energy), compiled, summed in another order."""
    n_directions, height, width = weights.shape
    total = 0.0
    for y in range(height):
        for x in range(width):
            label = labels[y, x]
            total += unary[label, y, x]
            for d in range(n_directions):
                dy, dx = FORWARD_OFFSETS[d]
                qy, qx = y + dy, x + dx
                if 0 <= qy < height and 0 <= qx < width and labels[qy, qx] != label:
                    total += weights[d, y, x]
    return total


@njit(nogil=True, cache=True)
def expansion_sweeps(unary, weights, labels, pinned, pin_cap, alphas, max_iter, energy_scale, graph, caps, trs,
                     snapshots, lean, cancel):
    """Alpha-expansion sweeps on the Numba max-flow, in one compiled call: the loop of
    :func:`alpha_expansion` (same moves, same skipped moves, same stopping rule) for the labels
    `alphas` (int64, increasing), modifying `labels` in place. `max_iter` < 0: until convergence.

    `graph` is a GridMaxflow's; with ``lean=None`` ("fast"), label i's residual graph is (caps[i],
    trs[i]) and snapshots[i] the labels its last move was made from (expand_in_place); with `lean` a
    tuple (fresh_cap, fresh_tr, index_scratch, value_scratch), a scratch graph like graph's cap and tr
    (all zero) and room for the entries a move changes (expand_sparse), the moves resume
    from the changed entries kept per label within :data:`LEAN_BUDGET` (expand_sparse), and `caps`,
    `trs` are not read. (None is a type of its own to Numba, which compiles each layout's loop
    without the other's moves.) The loop checks ``cancel[0]`` before each move and stops when it is set.

    Returns (history, converged, cancelled): the energy (grid_energy) before the first sweep and after each.
    """
    n_alphas = alphas.size
    n_directions, height, width = weights.shape
    rows = 2 * n_directions
    delta = np.empty(width)
    started = np.zeros(n_alphas, np.bool_)  # fast: its graph holds a flow; lean: its entries are kept
    useless_since = np.full(n_alphas, -1, np.int64)  # `accepted` when its move last changed nothing
    kept_index = [np.empty(0, np.int64) for _ in range(n_alphas)]
    kept_value = [np.empty(0) for _ in range(n_alphas)]
    kept_entries = 0
    budget = LEAN_BUDGET * (rows + 1) * height * width
    history = [grid_energy(unary, weights, labels)]
    accepted = 0
    converged = n_alphas == 0
    while not converged and (max_iter < 0 or len(history) <= max_iter):
        converged = True
        for i in range(n_alphas):
            if cancel[0]:
                return np.array(history), False, True
            if useless_since[i] == accepted:
                continue
            if lean is not None:
                resume = started[i]
                if resume:
                    kept_entries -= kept_index[i].size
                last_sweep = max_iter >= 0 and len(history) == max_iter  # no move will resume
                room = -1 if last_sweep else budget - kept_entries
                moved, index, value, keep = expand_sparse(unary, weights, labels, pinned, pin_cap, alphas[i],
                                                          energy_scale, delta, graph, lean[0], lean[1], lean[2],
                                                          lean[3], snapshots[i], kept_index[i], kept_value[i],
                                                          resume, room)
                started[i] = keep
                kept_index[i], kept_value[i] = index, value
                kept_entries += index.size
            else:
                residual = graph[:3] + (caps[i], trs[i]) + graph[5:]
                moved = expand_in_place(unary, weights, labels, pinned, pin_cap, alphas[i], energy_scale,
                                        delta, residual, snapshots[i], not started[i])
                started[i] = True
            if moved:
                accepted += 1
                converged = False
            else:
                useless_since[i] = accepted
        history.append(grid_energy(unary, weights, labels))
        # each accepted move lowers the energy; if rounding made the sweep's moves look better than
        # they were, stop rather than cycle
        converged = converged or history[-1] >= history[-2]
    return np.array(history), converged, False


def alpha_expansion(problem, init, max_iter, min_cut, labels=None):
    """Alpha-expansion over the labels in increasing order (all, or the subset `labels`), sweeping
    until no move lowers the energy or `max_iter`; with two labels and no subset, one exact
    min-cut instead. A move is skipped when the labeling has not changed since that same move last
    found nothing to improve (it would find nothing again). (:func:`expansion_sweeps` is this loop
    compiled, for the Numba max-flow.)

    `min_cut(source_cap, sink_cap, edge_cap, symmetric)` returns the max-flow value and the (H, W)
    bool map of sink-side nodes; `edge_cap` is (D, H, W), and with ``symmetric=False`` the reverse
    edges have no capacity. Returns the backend result dict.
    """
    alphas = move_labels(problem, labels)
    labels = init.copy()
    history = [problem.energy(labels)]
    if problem.n_labels == 2 and len(alphas) == 2:
        return two_label_cut(problem, min_cut, history)
    unary = label_major_unary(problem)
    weights = problem.lam * problem.weights
    pinned, pin_cap = problem.seeded, pin_capacity(problem, unary)
    source_cap, sink_cap, delta = np.empty(problem.shape), np.empty(problem.shape), np.empty(problem.shape[1])
    edge_cap = np.empty_like(weights)

    def expand(alpha, energy_scale):
        """Perform the alpha-expansion move on `labels` if it lowers the energy; True if so."""
        current = expansion_capacities(unary, weights, labels, pinned, pin_cap, alpha, source_cap, sink_cap,
                                       edge_cap, delta)
        flow, sink_side = min_cut(source_cap, sink_cap, edge_cap, symmetric=False)
        if not improves(flow, current, energy_scale):
            return False
        labels[sink_side] = alpha
        return True

    accepted = 0  # moves accepted so far
    useless_since = {}  # alpha -> value of `accepted` when its move last changed nothing
    converged = problem.n_labels == 1
    while not converged and (max_iter is None or len(history) <= max_iter):
        converged = True
        for alpha in alphas:
            check_cancelled()
            if useless_since.get(alpha) == accepted:
                continue
            if expand(alpha, problem.energy_scale):
                accepted += 1
                converged = False
            else:
                useless_since[alpha] = accepted
        history.append(problem.energy(labels))
        # each accepted move lowers the energy; if rounding made the sweep's moves look better than
        # they were, stop rather than cycle
        converged = converged or history[-1] >= history[-2]
    return {"labels": labels, "history": history, "converged": converged}


def two_label_cut(problem, min_cut, history):
    """The exact minimum of a two-label problem: one min-cut (`min_cut` as in :func:`alpha_expansion`);
    `history` holds the starting labeling's energy. Returns the backend result dict."""
    _, sink_side = min_cut(*binary_capacities(problem), symmetric=True)
    labels = sink_side.astype(np.int32)
    history.append(problem.energy(labels))
    return {"labels": labels, "history": history, "converged": True}
