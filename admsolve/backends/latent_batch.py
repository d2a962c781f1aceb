"""ADM's latent step for a batch, in one compiled call per thread: for each image it is given, the grid
problem of eq. 8 is built (:mod:`admsolve.energies._kernels`: the ADM unary and the contrast weights,
as :class:`~admsolve.training.ADMStep` builds them in Python) and solved by ``numba-expansion``'s
algorithm (:func:`~.moves.expansion_sweeps`, or the exact cut with two labels), with no return to
Python between images. The labels, moves and energies are those of building each
:class:`~admsolve.GridCRF` and solving it with ``numba-expansion``; the energies are the reference's
formula summed in compiled code (:func:`~.moves.grid_energy`, as the backend's history)."""

import numpy as np
from numba import njit

from ..energies._kernels import adm_cost, contrast_weights_into
from ._gridflow import grid_graph, load_and_solve
from .moves import expansion_sweeps, grid_energy, pin_bound

_FORWARD_DY = np.array((0, 1, 1, 1), dtype=np.int64)
_FORWARD_DX = np.array((1, 0, 1, -1), dtype=np.int64)


@njit(nogil=True, cache=True)
def solve_latent_batch(indices, probs, images, seeds, valid, boxes, gamma, eps, lam, n_directions, unlabeled,
                       argmax_init, restrict, max_iter, fast_budget, two_labels, cancel):
    """Solve eq. 8 for the images `indices` of the batch.

    probs : (N, K, H, W) float32 or float64, the network's probabilities; images : (N, H, W, C) float64; seeds :
    (N, H, W) int64, `unlabeled` where free; valid : (N, H, W) bool; boxes : (N, 4) int64, each image's
    problem rows boxes[i, 0]:boxes[i, 1] and columns boxes[i, 2]:boxes[i, 3]. Within its box an image's
    problem has unaries ``adm_cost(clip(S, 0, 1))`` at valid pixels and 0 elsewhere, and the contrast
    weights (Boykov-Jolly sigma) of the valid pixels times `lam`. The solve starts from argmax S
    (`argmax_init`) or label 0, seeds applied, and moves to every label, or with `restrict` to those of
    argmax S and the seeds; the fast memory layout (residual graphs per label) where it needs at most
    `fast_budget` bytes (None: always), else the lean one. `two_labels`: True with two labels (a problem
    that moves to both is solved exactly by one cut, as the backend does), None with more. `max_iter` < 0: sweeps until convergence. ``cancel[0]`` set
    stops the work after the current move.

    Returns (labels, histories, converged, lean, moved, cancelled): per image of `indices` its box's
    int32 labels, its energies (start, then one per sweep), whether it converged, whether the lean layout
    was chosen and the number of labels moved to; and whether `cancel` stopped the call (the lists then
    hold the images done before).
    """
    n_labels = probs.shape[1]
    rows = 2 * n_directions
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
        n = height * width
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
        # the box's image, valid pixels and seeds; the start (seeds applied) and the labels seen
        picture = np.empty((height, width, images.shape[3]))
        mask, pinned = np.empty((height, width), np.bool_), np.empty((height, width), np.bool_)
        box_seeds = np.empty((height, width), np.int64)
        labels = np.empty((height, width), np.int32)
        seen = np.zeros(n_labels, np.bool_)
        for y in range(height):
            for x in range(width):
                for c in range(images.shape[3]):
                    picture[y, x, c] = images[i, top + y, left + x, c]
                mask[y, x] = valid[i, top + y, left + x]
                seed = seeds[i, top + y, left + x]
                box_seeds[y, x], pinned[y, x] = seed, seed != unlabeled
                labels[y, x] = seed if pinned[y, x] else (guess[y, x] if argmax_init else 0)
                seen[guess[y, x]] = True
                if pinned[y, x]:
                    seen[seed] = True
        n_seen = 0
        for label in range(n_labels):
            n_seen += seen[label]
        weights = np.zeros((n_directions, height, width))
        contrast_weights_into(picture, mask, -1.0, weights)
        scaled = np.empty((n_directions, height, width))
        weight_sum = 0.0
        for d in range(n_directions):
            for y in range(height):
                for x in range(width):
                    scaled[d, y, x] = lam * weights[d, y, x]
                    weight_sum += weights[d, y, x]
        alphas = np.empty(0 if n_labels < 2 else (n_seen if restrict else n_labels), np.int64)
        count = 0
        for label in range(n_labels if alphas.size else 0):
            if seen[label] or not restrict:
                alphas[count] = label
                count += 1
        graph = grid_graph(height, width, n_directions)
        moved[j] = alphas.size
        if fast_budget is not None:  # (None: Numba compiles this call without the lean layout)
            lean_used[j] = n * alphas.size * ((2 * n_directions + 1) * 8 + 4) > fast_budget
        stopped = False
        history = np.empty(0)
        if two_labels is not None and alphas.size == 2:  # (None: compiled without the exact cut)
            history = np.empty(2)
            history[0] = grid_energy(unary, scaled, labels)
            _two_label_cut(unary, scaled, box_seeds, graph, labels)
            history[1] = grid_energy(unary, scaled, labels)
            converged[j] = True
        else:
            energy_scale = lam * weight_sum
            for y in range(height):
                for x in range(width):
                    largest = 0.0
                    for label in range(n_labels):
                        largest = max(largest, abs(unary[label, y, x]))
                    energy_scale += largest
            pin_cap = pin_bound(unary, weights, lam)
            snapshots = np.empty((alphas.size, height, width), np.int32)
            if fast_budget is not None:
                if lean_used[j]:
                    scratch = (np.zeros((rows, n)), np.zeros(n), np.empty(n, np.int64), np.empty(n))
                    history, converged[j], stopped = expansion_sweeps(
                        unary, scaled, labels, pinned, pin_cap, alphas, max_iter, energy_scale, graph,
                        np.zeros((0, rows, n)), np.zeros((0, n)), snapshots, scratch, cancel)
            if not lean_used[j]:  # the residual graphs in this call's buffers (a label's first move writes its graph)
                if caps.size < alphas.size * rows * n:
                    caps, trs = np.empty(alphas.size * rows * n), np.empty(alphas.size * n)
                history, converged[j], stopped = expansion_sweeps(
                    unary, scaled, labels, pinned, pin_cap, alphas, max_iter, energy_scale, graph,
                    caps[:alphas.size * rows * n].reshape((alphas.size, rows, n)),
                    trs[:alphas.size * n].reshape((alphas.size, n)), snapshots, None, cancel)
        if stopped:
            return labels_out, histories, converged, lean_used, moved, True
        labels_out.append(labels)
        histories.append(history)
    return labels_out, histories, converged, lean_used, moved, False


@njit(nogil=True, cache=True)
def _two_label_cut(unary, scaled, seeds, graph, labels):
    """The exact minimum of a two-label problem into `labels` (y_p = label of p, the sink side 1): the
    capacities of moves.binary_capacities, one max-flow."""
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
            if seeds[y, x] == 0:
                source_cap[y * width + x] += big
            elif seeds[y, x] == 1:
                sink_cap[y * width + x] += big
    edges = np.ascontiguousarray(scaled).reshape((n_directions, n))
    sink_side = np.zeros(n, np.bool_)
    load_and_solve(source_cap, sink_cap, edges, edges, _FORWARD_DY[:n_directions], _FORWARD_DX[:n_directions],
                   width, graph, sink_side)
    for p in range(n):
        labels[p // width, p % width] = 1 if sink_side[p] else 0
