"""Max-flow / min-cut on 2-D grid graphs: the Boykov-Kolmogorov algorithm, compiled with Numba.

The graph is implicit: an H x W grid, node p = y * W + x, and D in {2, 4} forward directions with
offsets (dy, dx) = (0, 1), (1, 0) [, (1, 1), (1, -1)]. Every forward direction d has a reverse
direction D + d with offset (-dy, -dx), so a node has up to 2D neighbours; edges leaving the image
do not exist.

Residual capacities are kept in one float64 array ``cap`` of shape (2D, N): ``cap[k, p]`` is the
residual capacity of the edge from p to its neighbour p + offset[k]. The terminal edges are folded
into one number per node, ``tr[p]``: a positive value is the residual capacity of source -> p, a
negative value minus the residual capacity of p -> sink (after cancelling min(source, sink) capacity
through the node, at most one of the two is non-zero, and augmentations keep it that way).

The algorithm is Boykov & Kolmogorov's (2004) with one change: of its two search trees, S from the
source and T from the sink (edges with positive residual capacity towards the sink), only T grows.
S is just the nodes with source capacity left (and those adopted under them). In an alpha-expansion
move most nodes have source capacity, so growing S would scan the whole grid for every move, while
T covers only the region that may change. It repeats:

* growth: an active node of T takes free neighbours into T, until it meets a node of S;
* augmentation: pushes the bottleneck flow along the path source -> S ... -> T ... -> sink;
  nodes whose edge to their parent (or terminal) got saturated become orphans;
* adoption: each orphan looks for a new parent in its tree (the one closest to the terminal); if
  there is none it becomes free, its children become orphans, and the T neighbours that could grow
  into it again are made active.

The trees are kept between augmentations. Active nodes and orphans are processed first in, first
out. Each node carries a timestamp and a distance to its terminal (the "closest parent" heuristic).
When no active node is left, no residual edge enters T and no node outside T has sink capacity
left, so no augmenting path exists: the flow is maximal, and T (the nodes that can reach the sink in
the residual graph, the same set for every maximum flow) is the sink side of a minimum cut.
"""

import numpy as np
from numba import njit

# Tree labels (int8).
FREE = 0
SOURCE = 1
SINK = 2

# Parent codes (int8): 0 .. 2D-1 is the direction from a node to its parent, else one of these.
NO_PARENT = -1
TERMINAL = 100
ORPHAN = 101

# Forward directions (dy, dx), in the package's fixed order.
FORWARD_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))

_FAR = 1 << 30  # a distance larger than any path length
_MAX_CAP = np.finfo(np.float64).max  # capacities must be finite: 0 <= c <= _MAX_CAP


@njit(nogil=True, cache=True)
def _load(source_cap, sink_cap, fwd_cap, bwd_cap, fwd_dy, fwd_dx, width, cap):
    """Fill the residual edge capacities from the inputs.

    Returns False if some capacity (terminal or of an existing edge) is negative, infinite or NaN.
    """
    n_fwd = fwd_cap.shape[0]
    n = source_cap.shape[0]
    height = n // width
    valid = True
    for p in range(n):
        s = source_cap[p]
        t = sink_cap[p]
        if not (0.0 <= s <= _MAX_CAP and 0.0 <= t <= _MAX_CAP):
            valid = False
    for d in range(n_fwd):
        dy = fwd_dy[d]
        dx = fwd_dx[d]
        shift = dy * width + dx
        for y in range(height):
            for x in range(width):
                p = y * width + x
                # forward edge p -> p + shift
                qy = y + dy
                qx = x + dx
                if 0 <= qy < height and 0 <= qx < width:
                    c = fwd_cap[d, p]
                    if not 0.0 <= c <= _MAX_CAP:
                        valid = False
                    cap[d, p] = c
                else:
                    cap[d, p] = 0.0
                # reverse-direction edge p -> r = p - shift, given as bwd_cap[d] at node r
                ry = y - dy
                rx = x - dx
                if 0 <= ry < height and 0 <= rx < width:
                    c = bwd_cap[d, p - shift]
                    if not 0.0 <= c <= _MAX_CAP:
                        valid = False
                    cap[n_fwd + d, p] = c
                else:
                    cap[n_fwd + d, p] = 0.0
    return valid


@njit(nogil=True, cache=True)
def _push_active(p, active_queue, in_active, tail, count):
    """Append p to the FIFO ring buffer of active nodes, unless it is already queued.

    Returns the new (tail, count) of the ring buffer; each node is queued at most once, so a buffer
    of N entries never overflows.
    """
    if not in_active[p]:
        in_active[p] = True
        active_queue[tail] = p
        tail += 1
        if tail == active_queue.shape[0]:
            tail = 0
        count += 1
    return tail, count


@njit(nogil=True, cache=True)
def _augment(s, t, bridge, cap, tr, offset, reverse, parent, orphan_queue, n_orphans):
    """Push the bottleneck flow along source -> ... -> s -> t -> ... -> sink.

    s is in the source tree, t in the sink tree, and `bridge` the direction from s to t. Nodes
    whose link to their parent gets saturated become orphans (appended to orphan_queue).
    Returns (flow pushed, new number of orphans).
    """
    # 1. bottleneck capacity
    delta = cap[bridge, s]
    p = s
    while parent[p] != TERMINAL:  # source side: flow goes parent -> p
        k = parent[p]
        q = p + offset[k]
        c = cap[reverse[k], q]
        if c < delta:
            delta = c
        p = q
    if tr[p] < delta:
        delta = tr[p]
    p = t
    while parent[p] != TERMINAL:  # sink side: flow goes p -> parent
        k = parent[p]
        c = cap[k, p]
        if c < delta:
            delta = c
        p = p + offset[k]
    if -tr[p] < delta:
        delta = -tr[p]

    # 2. push delta, collecting orphans
    cap[bridge, s] -= delta
    cap[reverse[bridge], t] += delta
    p = s
    while parent[p] != TERMINAL:
        k = parent[p]
        q = p + offset[k]
        cap[reverse[k], q] -= delta
        cap[k, p] += delta
        if cap[reverse[k], q] <= 0.0:
            parent[p] = ORPHAN
            orphan_queue[n_orphans] = p
            n_orphans += 1
        p = q
    tr[p] -= delta
    if tr[p] <= 0.0:
        parent[p] = ORPHAN
        orphan_queue[n_orphans] = p
        n_orphans += 1
    p = t
    while parent[p] != TERMINAL:
        k = parent[p]
        q = p + offset[k]
        cap[k, p] -= delta
        cap[reverse[k], q] += delta
        if cap[k, p] <= 0.0:
            parent[p] = ORPHAN
            orphan_queue[n_orphans] = p
            n_orphans += 1
        p = q
    tr[p] += delta
    if tr[p] >= 0.0:
        parent[p] = ORPHAN
        orphan_queue[n_orphans] = p
        n_orphans += 1
    return delta, n_orphans


@njit(nogil=True, cache=True)
def _adopt(n_orphans, time, cap, offset, reverse, nbr_mask, tree, parent, stamp, dist,
           orphan_queue, active_queue, in_active, a_tail, a_count):
    """Process the orphan queue (FIFO) until empty: re-attach each orphan or free it.

    Nodes whose path to the terminal was verified during this adoption phase get stamp == time and
    an exact distance, so later checks can stop there. Returns the active queue's (tail, count).
    """
    n_dir = offset.shape[0]
    # A node can be orphaned again after adoption, so more than N orphans may pass through in one
    # phase; but one is queued at most once at a time (its parent is ORPHAN while queued), so the
    # queue is a ring buffer of N entries: `head` and `n_orphans` count up, positions wrap around.
    size = orphan_queue.shape[0]
    head = 0
    while head < n_orphans:
        p = orphan_queue[head % size]
        head += 1
        side = tree[p]
        mask = nbr_mask[p]

        # look for the valid parent closest to the terminal
        best_k = -1
        best_d = _FAR
        for k in range(n_dir):
            if not (mask >> k) & 1:
                continue
            q = p + offset[k]
            if tree[q] != side:
                continue
            # the edge that would link p to q must have residual capacity towards the sink
            c = cap[reverse[k], q] if side == SOURCE else cap[k, p]
            if c <= 0.0:
                continue
            # walk from q towards the terminal; an orphan on the way makes q invalid
            j = q
            d = 0
            valid = False
            while True:
                if stamp[j] == time:
                    d += dist[j]
                    valid = True
                    break
                d += 1
                pk = parent[j]
                if pk == TERMINAL:
                    stamp[j] = time
                    dist[j] = 1
                    valid = True
                    break
                if pk == ORPHAN:
                    break
                j += offset[pk]
            if not valid:
                continue
            if d < best_d:
                best_d = d
                best_k = k
            # record the exact distances along the verified path
            j = q
            while stamp[j] != time:
                stamp[j] = time
                dist[j] = d
                d -= 1
                j += offset[parent[j]]

        if best_k >= 0:
            parent[p] = best_k
            stamp[p] = time
            dist[p] = best_d + 1
            continue

        # no parent: p becomes free; its children become orphans, and neighbours that could
        # grow into p again become active
        for k in range(n_dir):
            if not (mask >> k) & 1:
                continue
            q = p + offset[k]
            if tree[q] == SINK and cap[k, p] > 0.0:  # q may grow into p again
                a_tail, a_count = _push_active(q, active_queue, in_active, a_tail, a_count)
            if tree[q] != side:
                continue
            if parent[q] == reverse[k]:
                parent[q] = ORPHAN
                orphan_queue[n_orphans % size] = q
                n_orphans += 1
        tree[p] = FREE
        parent[p] = NO_PARENT
    return a_tail, a_count


@njit(nogil=True, cache=True)
def max_flow(source_cap, sink_cap, graph):
    """Maximum flow from the terminal capacities (flat, N) and the edge capacities already in
    ``cap`` of `graph` (``GridMaxflow.graph``). Returns the flow; afterwards tree[p] == SINK marks the
    sink side of the minimum cut (the nodes that can reach the sink in the final residual graph).
    """
    tr = graph[4]
    # cancel min(source, sink) through every node
    flow = 0.0
    for p in range(tr.shape[0]):
        s = source_cap[p]
        t = sink_cap[p]
        flow += t if s > t else s
        tr[p] = s - t
    return _augment_all(flow, graph)


@njit(nogil=True, cache=True)
def resume_max_flow(graph):
    """Maximum flow on the residual graph held in `graph` as it stands: that is, the flow that can
    still be pushed after an earlier max_flow on it and any changes made since (capacities can be
    raised or lowered in ``cap`` and ``tr``, keeping every ``cap`` >= 0). Returns that extra flow;
    the sink side is marked as after max_flow. Where little changed, little is left to push.
    """
    return _augment_all(0.0, graph)


@njit(nogil=True, cache=True)
def _augment_all(flow, graph):
    """Boykov-Kolmogorov on the residual graph in `graph`, counting on from `flow` already pushed."""
    offset, reverse, nbr_mask, cap, tr, tree, parent, stamp, dist, active_queue, in_active, orphan_queue = graph
    n = tr.shape[0]
    n_dir = offset.shape[0]

    # each node with terminal capacity left starts as an active root of its tree
    # active nodes: FIFO ring buffer active_queue[a_head ...], a_count entries (int64 from the start: a literal
    # 0 would have Numba compile the functions they are passed to a second time, for the literal)
    a_head, a_tail, a_count = np.int64(0), np.int64(0), np.int64(0)
    for p in range(n):
        in_active[p] = False
        stamp[p] = 0
        dist[p] = 1
        if tr[p] > 0.0:  # source roots stay passive: only the sink tree grows
            tree[p] = SOURCE
            parent[p] = TERMINAL
        elif tr[p] < 0.0:
            tree[p] = SINK
            parent[p] = TERMINAL
            a_tail, a_count = _push_active(p, active_queue, in_active, a_tail, a_count)
        else:
            tree[p] = FREE
            parent[p] = NO_PARENT

    time = 0
    current = -1  # node being grown; kept after an augmentation if still in its tree
    while True:
        p = current
        if p < 0:
            while a_count > 0:  # next active node that is still in a tree
                cand = active_queue[a_head]
                a_head += 1
                if a_head == n:
                    a_head = 0
                a_count -= 1
                in_active[cand] = False
                if tree[cand] != FREE:
                    p = cand
                    break
            if p < 0:
                break

        # growth of the sink tree: scan the neighbours of p until one in S is met
        s = -1
        t = -1
        bridge = -1
        mask = nbr_mask[p]
        for k in range(n_dir):
            if not (mask >> k) & 1:
                continue
            q = p + offset[k]
            rk = reverse[k]
            if cap[rk, q] <= 0.0:
                continue
            side = tree[q]
            if side == FREE:
                tree[q] = SINK
                parent[q] = rk
                stamp[q] = stamp[p]
                dist[q] = dist[p] + 1
                a_tail, a_count = _push_active(q, active_queue, in_active, a_tail, a_count)
            elif side == SOURCE:
                s = q
                t = p
                bridge = rk
                break
            elif stamp[q] <= stamp[p] and dist[q] > dist[p]:
                parent[q] = rk
                stamp[q] = stamp[p]
                dist[q] = dist[p] + 1

        if s < 0:  # p has no more free neighbours to grow into: it becomes passive
            current = -1
            continue

        delta, n_orphans = _augment(s, t, bridge, cap, tr, offset, reverse, parent,
                                    orphan_queue, 0)
        flow += delta
        time += 1
        a_tail, a_count = _adopt(n_orphans, time, cap, offset, reverse, nbr_mask, tree, parent,
                                 stamp, dist, orphan_queue, active_queue, in_active, a_tail,
                                 a_count)
        current = p if tree[p] != FREE else -1
    return flow


@njit(nogil=True, cache=True)
def load_and_solve(source_cap, sink_cap, fwd_cap, bwd_cap, fwd_dy, fwd_dx, width, graph, sink_side):
    """Max-flow value; writes sink_side[p] = True for the nodes that can reach the sink in the final
    residual graph (the sink tree).

    Returns (flow, False) without solving if some capacity is not finite and >= 0.
    """
    tree = graph[5]
    if not _load(source_cap, sink_cap, fwd_cap, bwd_cap, fwd_dy, fwd_dx, width, graph[3]):
        return 0.0, False
    flow = max_flow(source_cap, sink_cap, graph)
    for p in range(tree.shape[0]):
        sink_side[p] = tree[p] == SINK
    return flow, True


@njit(nogil=True, cache=True)
def grid_graph(height, width, n_directions):
    """A new max-flow workspace for an H x W grid with D forward directions: the tuple (offset, reverse,
    nbr_mask, cap, tr, tree, parent, ...) that max_flow and _augment_all unpack, residual capacities all
    zero. Bit k of nbr_mask[p] is set when the neighbour of p in direction k is inside the image."""
    n, n_dir = height * width, 2 * n_directions
    offset, reverse = np.empty(n_dir, np.int64), np.empty(n_dir, np.int64)
    mask = np.zeros(n, np.uint8)
    for k in range(n_dir):
        dy, dx = FORWARD_OFFSETS[k % n_directions]
        if k >= n_directions:
            dy, dx = -dy, -dx
        offset[k] = dy * width + dx  # flat index shift
        reverse[k] = (k + n_directions) % n_dir
        # for offset (dy, dx), the nodes in rows max(0, -dy) .. H - max(0, dy) - 1, likewise columns
        for y in range(max(0, -dy), height - max(0, dy)):
            for x in range(max(0, -dx), width - max(0, dx)):
                mask[y * width + x] |= np.uint8(1 << k)
    return (offset, reverse, mask, np.zeros((n_dir, n)), np.zeros(n), np.zeros(n, np.int8), np.zeros(n, np.int8),
            np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, np.int64), np.zeros(n, np.bool_),
            np.zeros(n, np.int64))


class GridMaxflow:
    """Reusable workspace for max-flow on an H×W grid with D in {2, 4}. Allocates every buffer once
    in __init__; each call to solve() reuses them (it will be called hundreds of times per problem,
    e.g. once per alpha-expansion move).

    The solver runs in Numba-compiled code that releases the GIL, so several instances can be used
    from several threads at once (one instance must not be shared between threads).

    Compiled callers may instead write the edge capacities straight into ``graph[3]`` (``cap``, see
    the module docstring; entries for edges leaving the image stay zero) and call max_flow(source_cap,
    sink_cap, graph), skipping solve()'s copy and checks; and keep residual graphs of their own
    (residual_graphs) to resume later.
    """

    def __init__(self, height: int, width: int, n_directions: int):
        height = int(height)
        width = int(width)
        n_directions = int(n_directions)
        if height < 1 or width < 1:
            raise ValueError(f"grid shape must be positive, got {(height, width)}")
        if n_directions not in (2, 4):
            raise ValueError(f"n_directions must be 2 or 4, got {n_directions}")
        self.height = height
        self.width = width
        self.n_directions = n_directions
        fwd = np.array(FORWARD_OFFSETS[:n_directions], dtype=np.int64)
        self.fwd_dy = np.ascontiguousarray(fwd[:, 0])
        self.fwd_dx = np.ascontiguousarray(fwd[:, 1])
        self.graph = grid_graph(height, width, n_directions)
        self.sink_side = np.zeros((height, width), dtype=np.bool_)
        self._sink_side_flat = self.sink_side.reshape(-1)

    def residual_graphs(self, count):
        """`count` workspaces like `graph`, each with residual capacities (``cap``, ``tr``) of its
        own, all zero, and this instance's search-tree buffers: residual graphs that a caller keeps
        and solves one at a time. Their capacities share one allocation: the kernel backs a large
        one with huge pages, which makes touching them the first time several times cheaper."""
        n_dir, n = self.graph[3].shape
        block = np.zeros((count, n_dir + 1, n))
        return [self.graph[:3] + (block[i, :n_dir], block[i, n_dir]) + self.graph[5:] for i in range(count)]

    def _as_input(self, array, shape, name):
        array = np.ascontiguousarray(array, dtype=np.float64)
        if array.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
        return array

    def solve(self, source_cap, sink_cap, fwd_cap, bwd_cap) -> float:
        """source_cap, sink_cap: (H, W) float64 >= 0, terminal capacities (source->p and p->sink).
        fwd_cap, bwd_cap: (D, H, W) float64 >= 0; fwd_cap[d, y, x] is the capacity of the edge from
        p=(y,x) to q=(y+dy_d, x+dx_d), bwd_cap[d, y, x] the capacity of q -> p.
        Returns the max-flow value. Afterwards self.sink_side is an (H, W) bool array (owned by the
        workspace, overwritten by the next solve): True where the node is on the sink side of a
        minimum cut (i.e. the node can reach the sink in the residual graph), False on the source
        side. Inputs are never modified. Entries of fwd_cap / bwd_cap for edges leaving the image
        are ignored; any other capacity that is negative, infinite or NaN raises ValueError.
        """
        h, w, d = self.height, self.width, self.n_directions
        n = h * w
        source_cap = self._as_input(source_cap, (h, w), "source_cap")
        sink_cap = self._as_input(sink_cap, (h, w), "sink_cap")
        fwd_cap = self._as_input(fwd_cap, (d, h, w), "fwd_cap")
        bwd_cap = self._as_input(bwd_cap, (d, h, w), "bwd_cap")
        flow, valid = load_and_solve(source_cap.reshape(n), sink_cap.reshape(n), fwd_cap.reshape(d, n),
                                     bwd_cap.reshape(d, n), self.fwd_dy, self.fwd_dx, w, self.graph,
                                     self._sink_side_flat)
        if not valid:
            raise ValueError("capacities must be finite and >= 0 (entries for edges leaving the "
                             "image excepted)")
        return float(flow)
