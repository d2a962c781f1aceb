"""A built-in example, generated in code, so the demo and tests run without any data set."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .._validation import UNLABELED


def synthetic_scene(*, height: int = 120, width: int = 160, noise: float = 40.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy three-region colour image with scribbles and its ground truth.

    Background (label 0) is a colour gradient, label 1 a disk, label 2 a rectangle whose colour is
    close to part of the background, so a colour model alone leaks and the Potts term has work to do.

    Returns
    -------
    image : (H, W, 3) uint8
    scribbles : (H, W) uint8, 255 where unlabeled
    truth : (H, W) uint8
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    truth = np.zeros((height, width), dtype=np.uint8)
    disk = (yy - 0.45) ** 2 + ((xx - 0.3) * width / height) ** 2 < 0.28 ** 2
    truth[disk] = 1
    truth[(yy > 0.25) & (yy < 0.8) & (xx > 0.6) & (xx < 0.9)] = 2
    colours = np.array([[90, 120, 170], [200, 90, 60], [70, 170, 100]], dtype=np.float64)
    image = colours[truth]
    image[truth == 0] += 60 * np.stack([xx, xx, -xx], axis=2)[truth == 0]
    image += ndimage.gaussian_filter(rng.normal(0, noise, image.shape), (1, 1, 0)) * 2.0
    image = np.clip(image, 0, 255).astype(np.uint8)

    scribbles = np.full((height, width), UNLABELED, dtype=np.uint8)
    strokes = [(0, 0.1, 0.05, 0.1, 0.95), (0, 0.92, 0.1, 0.92, 0.9),
               (1, 0.45, 0.2, 0.45, 0.4), (2, 0.35, 0.75, 0.7, 0.75)]
    for label, y0, x0, y1, x1 in strokes:
        for t in np.linspace(0, 1, 4 * max(height, width)):
            y = int(round((y0 + t * (y1 - y0)) * (height - 1)))
            x = int(round((x0 + t * (x1 - x0)) * (width - 1)))
            scribbles[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = label
    return image, scribbles, truth
