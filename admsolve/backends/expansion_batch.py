"""Alpha-expansion of a batch of grid CRFs in one compiled call per thread, with no return to Python between
problems: ``numba-expansion``'s algorithm (:func:`solve_grid`: the sweeps of :func:`~.moves.expansion_sweeps`,
or the exact cut with two labels), the residual graphs' buffers reused from problem to problem. Two entries:

- :func:`solve_grid_batch`, problems given as arrays of one shape (``numba-expansion``'s ``minimize`` and
  :func:`~admsolve.solve_batch`);
- :func:`solve_latent_batch`, ADM's latent step: each image's problem of eq. 8 is built here
  (:mod:`admsolve.energies._kernels`: the ADM unary and the contrast weights, as
  :class:`~admsolve.training.ADMStep` builds them in Python), then solved the same way.

The energies are the reference's formula summed in compiled code (:func:`~.moves.grid_energy`)."""

import numpy as np
from numba import njit

from ..energies._kernels import adm_cost, contrast_weights_into
from ._gridflow import FORWARD_OFFSETS, grid_graph, load_and_solve
from .moves import expansion_sweeps, grid_energy, pin_bound

_FORWARD_DY = np.array([dy for dy, _ in FORWARD_OFFSETS], dtype=np.int64)
_FORWARD_DX = np.array([dx for _, dx in FORWARD_OFFSETS], dtype=np.int64)


@njit(nogil=True, cache=True)
def residual_graph_bytes(n_pixels, n_directions, n_moved):
    """Bytes of the fast layout's residual graphs: (2 D + 1) float64 and an int32 labeling per pixel and
    label moved to."""
    return n_pixels * n_moved * ((2 * n_directions + 1) * 8 + 4)


@njit(inline="always")
def solve_grid(unary, scaled, pin_cap, energy_scale, labels, pinned, moves_to, max_iter, fast_budget, two_labels,
               caps, trs, cancel):
    """Alpha-expansion of one grid CRF from `labels` (int32 (H, W), seeds applied; modified in place).

    unary : (K, H, W) label-major; scaled : (D, H, W), the weights times lambda; pin_cap : pin_bound's;
    energy_scale : the problem's; pinned : (H, W) bool, the seeded pixels; moves_to : (K,) bool, the labels
    to move to (sorted, as move_labels gives them). `max_iter` < 0: until convergence. The fast layout
    (residual graphs per label, in `caps` and `trs`, grown when too small) where it needs at most
    `fast_budget` bytes (None: always, and Numba compiles the call without the lean layout), else the lean
    one. `two_labels` True (None: compiled without): a problem of two labels that moves to both is solved
    exactly by one cut, as the backend does.

    Returns (history, converged, lean, cancelled, caps, trs).
    """
    n_labels, height, width = unary.shape
    n_directions = scaled.shape[0]
    n, rows = height * width, 2 * scaled.shape[0]
    n_moved = 0
    for label in range(n_labels):
        n_moved += moves_to[label]
    alphas = np.empty(n_moved if n_labels > 1 else 0, np.int64)
    count = 0
    for label in range(n_labels if alphas.size else 0):
        if moves_to[label]:
            alphas[count] = label
            count += 1
    lean = False
    if fast_budget is not None:
        lean = residual_graph_bytes(n, n_directions, n_moved) > fast_budget
    graph = grid_graph(height, width, n_directions)
    history = np.empty(0)
    if two_labels is not None:
        if alphas.size == 2:
            history = np.empty(2)
            history[0] = grid_energy(unary, scaled, labels)
            _two_label_cut(unary, scaled, pinned, graph, labels)
            history[1] = grid_energy(unary, scaled, labels)
            return history, True, lean, False, caps, trs
    snapshots = np.empty((alphas.size, height, width), np.int32)
    converged, stopped = False, False
    if fast_budget is not None:
        if lean:
            scratch = (np.zeros((rows, n)), np.zeros(n), np.empty(n, np.int64), np.empty(n))
            history, converged, stopped = expansion_sweeps(
                unary, scaled, labels, pinned, pin_cap, alphas, max_iter, energy_scale, graph,
                np.zeros((0, rows, n)), np.zeros((0, n)), snapshots, scratch, cancel)
    if not lean:  # (a label's first move writes its whole graph: the buffers need no zeroing)
        if caps.size < alphas.size * rows * n:
            caps, trs = np.empty(alphas.size * rows * n), np.empty(alphas.size * n)
        history, converged, stopped = expansion_sweeps(
            unary, scaled, labels, pinned, pin_cap, alphas, max_iter, energy_scale, graph,
            caps[:alphas.size * rows * n].reshape((alphas.size, rows, n)),
            trs[:alphas.size * n].reshape((alphas.size, n)), snapshots, None, cancel)
    return history, converged, lean, stopped, caps, trs


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


@njit(nogil=True, cache=True)
def solve_grid_batch(indices, unaries, weights, lams, energy_scales, seeds, unlabeled, labels, moves_to, max_iters,
                     fast_budget, two_labels, cancel):
    """Solve the problems `indices` of the stacks of :func:`~.numba_expansion.stacked` (labels: the starts, seeds
    applied, modified in place), with moves_to (N, K) bool and max_iters (N,); `fast_budget`, `two_labels`
    and `cancel` as in :func:`solve_grid`.

    Returns (histories, converged, lean, cancelled) for the problems `indices` (the lists hold those done
    when `cancel` stopped the call).
    """
    n_labels, n_directions, height, width = unaries.shape[3], weights.shape[1], unaries.shape[1], unaries.shape[2]
    histories = []
    converged, lean = np.zeros(indices.size, np.bool_), np.zeros(indices.size, np.bool_)
    caps, trs = np.empty(0), np.empty(0)
    unary = np.empty((n_labels, height, width))
    scaled = np.empty((n_directions, height, width))
    pinned = np.empty((height, width), np.bool_)
    for j in range(indices.size):
        if cancel[0]:
            return histories, converged, lean, True
        i = indices[j]
        load_problem(unaries, weights, lams, seeds, unlabeled, i, unary, scaled, pinned)
        history, converged[j], lean[j], stopped, caps, trs = solve_grid(
            unary, scaled, pin_bound(unary, scaled), energy_scales[i], labels[i], pinned, moves_to[i], max_iters[i],
            fast_budget, two_labels, caps, trs, cancel)
        if stopped:
            return histories, converged, lean, True
        histories.append(history)
    return histories, converged, lean, False


@njit(nogil=True, cache=True)
def solve_latent_batch(indices, probs, images, seeds, valid, boxes, gamma, eps, lam, n_directions, unlabeled,
                       argmax_init, restrict, max_iter, fast_budget, two_labels, cancel):
    """Build eq. 8 for the images `indices` of a batch and solve it with :func:`solve_grid`.

    probs : (N, K, H, W) float32 or float64, the network's probabilities; images : (N, H, W, C) float64;
    seeds : (N, H, W) int64, `unlabeled` where free; valid : (N, H, W) bool; boxes : (N, 4) int64, each
    image's problem rows boxes[i, 0]:boxes[i, 1] and columns boxes[i, 2]:boxes[i, 3]. Within its box an
    image's problem has unaries ``adm_cost(clip(S, 0, 1))`` at valid pixels and 0 elsewhere, and the
    contrast weights (Boykov-Jolly sigma) of the valid pixels times `lam`. The solve starts from argmax S
    (`argmax_init`) or label 0, seeds applied, and moves to every label, or with `restrict` to those of
    argmax S and the seeds. `max_iter`, `fast_budget`, `two_labels` and `cancel` as in :func:`solve_grid`.

    Returns (labels, histories, converged, lean, moved, cancelled): per image of `indices` its box's
    int32 labels, its energies (start, then one per sweep), whether it converged, whether the lean layout
    ran and the number of labels moved to; and whether `cancel` stopped the call (the lists then hold the
    images done before).
    """
    n_labels = probs.shape[1]
    labels_out, histories = [], []
    converged = np.zeros(indices.size, np.bool_)
    lean_used = np.zeros(indices.size, np.bool_)
    moved = np.zeros(indices.size, np.int64)
    caps, trs = np.empty(0), np.empty(0)  # the fast layout's residual graphs, reused from image to image
    for j in range(indices.size):
        if cancel[0]:
            return labels_out, histories, converged, lean_used, moved, True
        i = indices[j]
        top, bottom, left, right = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        height, width = bottom - top, right - left
        unary = np.empty((n_labels, height, width))
        guess = np.empty((height, width), np.int32)  # argmax S, the first of equal probabilities
        best = np.empty((height, width))
        for label in range(n_labels):  # label by label: contiguous reads and writes
            for y in range(height):
                for x in range(width):
                    prob = min(max(np.float64(probs[i, label, top + y, left + x]), 0.0), 1.0)
                    if label == 0 or prob > best[y, x]:
                        best[y, x], guess[y, x] = prob, label
                    unary[label, y, x] = adm_cost(prob, gamma, eps) if valid[i, top + y, left + x] else 0.0
        # the box's image and valid pixels, the start (seeds applied), the labels seen
        picture = np.empty((height, width, images.shape[3]))
        mask, pinned = np.empty((height, width), np.bool_), np.empty((height, width), np.bool_)
        labels = np.empty((height, width), np.int32)
        seen = np.zeros(n_labels, np.bool_)
        for y in range(height):
            for x in range(width):
                for c in range(images.shape[3]):
                    picture[y, x, c] = images[i, top + y, left + x, c]
                mask[y, x] = valid[i, top + y, left + x]
                seed = seeds[i, top + y, left + x]
                pinned[y, x] = seed != unlabeled
                labels[y, x] = seed if pinned[y, x] else (guess[y, x] if argmax_init else 0)
                seen[guess[y, x]] = True
                if pinned[y, x]:
                    seen[seed] = True
        weights = np.zeros((n_directions, height, width))
        contrast_weights_into(picture, mask, -1.0, weights)
        scaled = np.empty((n_directions, height, width))
        energy_scale = 0.0  # as GridCRF's: the largest |unary| of each pixel plus lam times the weights
        for d in range(n_directions):
            for y in range(height):
                for x in range(width):
                    scaled[d, y, x] = lam * weights[d, y, x]
                    energy_scale += weights[d, y, x]
        energy_scale *= lam
        for y in range(height):
            for x in range(width):
                largest = 0.0
                for label in range(n_labels):
                    largest = max(largest, abs(unary[label, y, x]))
                energy_scale += largest
        moves_to = seen if restrict else np.ones(n_labels, np.bool_)
        for label in range(n_labels):
            moved[j] += moves_to[label]
        history, converged[j], lean_used[j], stopped, caps, trs = solve_grid(
            unary, scaled, pin_bound(unary, scaled), energy_scale, labels, pinned, moves_to, max_iter, fast_budget,
            two_labels, caps, trs, cancel)
        if stopped:
            return labels_out, histories, converged, lean_used, moved, True
        labels_out.append(labels)
        histories.append(history)
    return labels_out, histories, converged, lean_used, moved, False


@njit(nogil=True, cache=True)
def _two_label_cut(unary, scaled, pinned, graph, labels):
    """The exact minimum of a two-label problem into `labels` (y_p = label of p, the sink side 1; a `pinned`
    pixel keeps its label, its seed): the capacities of moves.binary_capacities, one max-flow."""
    n_directions, height, width = scaled.shape
    n = height * width
    source_cap, sink_cap = np.empty(n), np.empty(n)
    big = 0.0
    for y in range(height):
        for x in range(width):
            delta = unary[1, y, x] - unary[0, y, x]
            source_cap[y * width + x], sink_cap[y * width + x] = max(delta, 0.0), max(-delta, 0.0)
            big += abs(delta)
    big += 2.0 * scaled.sum()
    big = 2.0 * big if big > 0 else 1.0
    for y in range(height):
        for x in range(width):
            if pinned[y, x] and labels[y, x] == 0:
                source_cap[y * width + x] += big
            elif pinned[y, x]:
                sink_cap[y * width + x] += big
    edges = np.ascontiguousarray(scaled).reshape((n_directions, n))
    sink_side = np.zeros(n, np.bool_)
    load_and_solve(source_cap, sink_cap, edges, edges, _FORWARD_DY[:n_directions], _FORWARD_DX[:n_directions],
                   width, graph, sink_side)
    for p in range(n):
        labels[p // width, p % width] = 1 if sink_side[p] else 0
