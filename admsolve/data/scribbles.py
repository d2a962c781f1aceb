"""Scribbles made from ground-truth masks, for datasets that have none (e.g. MSRC-21): one straight
stroke per region through its deepest pixel along its principal axis, shortened towards its middle
as in ScribbleSup's protocol."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from .._validation import UNLABELED, as_scalar, describe


def _axis_stroke(inside, depth, start, axis, margin):
    """Pixels of the line through `start` along `axis`, both ways, while inside and deeper than `margin`."""
    height, width = inside.shape
    halves = []
    for sign in (-1.0, 1.0):
        half, step = [], 1
        while True:
            y = int(round(start[0] + sign * step * axis[0]))
            x = int(round(start[1] + sign * step * axis[1]))
            if not (0 <= y < height and 0 <= x < width) or not inside[y, x] or depth[y, x] < margin:
                break
            if not half or half[-1] != (y, x):
                half.append((y, x))
            step += 1
        halves.append(half)
    return halves[0][::-1] + [tuple(start)] + halves[1]


def generate_scribbles(mask: ArrayLike, *, length: float = 1.0, seed: int = 0, unlabeled: int = UNLABELED,
                       min_pixels: int = 1) -> np.ndarray:
    """One stroke per connected region of each label of `mask`.

    The stroke is the straight line through the region's deepest pixel (largest distance to its
    border) along the region's principal axis, kept while it stays inside the region and at least
    a fifth of the maximum depth away from the border: the main branch of the region's skeleton for
    roughly convex regions. `length` keeps the middle fraction of it, shortening both ends equally
    (ScribbleSup's protocol): 1 is the whole stroke, 0 one pixel (a click).

    Parameters
    ----------
    mask : (H, W) array_like of int
        Ground-truth labels; `unlabeled` marks pixels that belong to no label.
    length : float, optional
        Fraction of each stroke kept, in [0, 1], around its middle.
    seed : int, optional
        Breaks ties between equally deep pixels; the same seed gives the same scribbles.
    unlabeled : int, optional
        The value of unlabelled pixels, in `mask` and in the result.
    min_pixels : int, optional
        Regions smaller than this get no stroke.

    Returns
    -------
    (H, W) ndarray, uint8 where the labels and `unlabeled` fit in it (else int32): a region's label on
    its stroke, `unlabeled` elsewhere. Strokes lie inside their region and never on void pixels.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask: expected a non-empty 2-D integer array, got {describe(mask)}")
    length = as_scalar(length, "length")
    if not 0.0 <= length <= 1.0:
        raise ValueError(f"length: expected a value in [0, 1], got {length!r}")
    min_pixels = as_scalar(min_pixels, "min_pixels", minimum=1, integer=True)
    rng = np.random.default_rng(seed)
    fits_uint8 = 0 <= min(mask.min(), unlabeled) and max(mask.max(), unlabeled) <= 255
    scribbles = np.full(mask.shape, unlabeled, dtype=np.uint8 if fits_uint8 else np.int32)
    jitter = rng.random(mask.shape) * 1e-3  # far below the 1-pixel steps of the distance transform
    for label in np.unique(mask[mask != unlabeled]):
        regions, count = ndimage.label(mask == label, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            inside = regions == index
            if inside.sum() < min_pixels:
                continue
            depth = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1] + jitter
            depth[~inside] = -1.0
            start = np.unravel_index(np.argmax(depth), depth.shape)
            coords = np.argwhere(inside).astype(float)
            spread = np.cov(coords.T) if len(coords) > 1 else np.eye(2)
            axis = np.linalg.eigh(np.atleast_2d(spread))[1][:, -1]  # direction of the largest variance
            stroke = _axis_stroke(inside, depth, start, axis, margin=max(1.0, 0.2 * depth[start]))
            keep = int(round(length * (len(stroke) - 1)))  # pixels kept beyond the first
            lo = (len(stroke) - 1 - keep) // 2  # shortened equally from both ends
            for y, x in stroke[lo:lo + keep + 1]:
                scribbles[y, x] = label
    return scribbles
