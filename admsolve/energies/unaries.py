"""Unary terms: the ADM term of eq. 8 from network probabilities, and colour models fitted on
scribbles for interactive ("shallow") segmentation."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from .._validation import MAX_LABELS, UNLABELED, as_label_map, as_real_array, as_scalar


#: The probability below which adm_unary clips (its default `eps`).
ADM_EPS = 1e-8


def adm_unary(probs: ArrayLike, *, gamma: float = 1.0, eps: float = ADM_EPS) -> np.ndarray:
    """Unary of the ADM latent problem (eq. 8): ``-gamma * log(max(S, eps))``.

    Minimising ``sum_p unary[p, X_p]`` over one-hot X equals minimising the KL divergence
    ``sum_p KL(X_p || S_p)`` of the paper up to a constant.

    Parameters
    ----------
    probs : (H, W, K) array_like of float
        Softmax output S, values in [0, 1].
    gamma : float, optional
        Non-negative weight of the divergence term.
    eps : float, optional
        Probabilities are clipped below at ``eps`` (> 0), so the unary is at most ``-gamma*log(eps)``.

    Returns
    -------
    (H, W, K) ndarray of float64
    """
    probs = as_real_array(probs, "probs", 3)
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"probs: expected probabilities in [0, 1], got values in [{probs.min():g}, {probs.max():g}]")
    gamma = as_scalar(gamma, "gamma", minimum=0.0)
    eps = as_scalar(eps, "eps")
    if not 0 < eps < 1:
        raise ValueError(f"eps: expected a value in (0, 1), got {eps!r}")
    if not math.isfinite(gamma * -math.log(eps)):  # the largest unary
        raise ValueError(f"gamma: expected gamma * -log(eps) to be finite, got gamma {gamma:g} and eps {eps:g}")
    from ._kernels import adm_unary_into  # Numba, loaded when first used

    unary = np.empty(probs.shape)
    adm_unary_into(np.ascontiguousarray(probs).reshape(-1), gamma, eps, unary.reshape(-1))
    return unary


def scribble_unary(image: ArrayLike, scribbles: ArrayLike, *, n_labels: int | None = None, bins: int = 16,
                   smoothing: float = 1.0, unlabeled: int = UNLABELED) -> np.ndarray:
    """Colour-model unaries from scribbles alone (Boykov-Jolly interactive graph cuts).

    For each label, a colour histogram of its scribbled pixels (``bins`` per channel, smoothed by a
    Gaussian of ``smoothing`` bins, plus one pseudo-count spread over all bins) gives a likelihood;
    the unary is its negative log.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        uint8 image (values 0..255) or float image with values in [0, 1].
    scribbles : (H, W) array_like of int
        Label of each scribbled pixel, ``unlabeled`` elsewhere.
    n_labels : int, optional
        K, at most MAX_LABELS (256). By default the largest scribbled label plus one; the scribbles'
        values are checked against that bound first.
    bins : int, optional
        Histogram bins per colour channel.
    smoothing : float, optional
        Standard deviation, in bins, of the Gaussian that smooths each histogram (0: none).
    unlabeled : int, optional
        The value of ``scribbles`` that marks an unlabeled pixel.

    Returns
    -------
    (H, W, K) ndarray of float64
    """
    raw = np.asarray(image)
    image = as_real_array(image, "image", (2, 3))
    if np.issubdtype(raw.dtype, np.integer):
        image /= 255.0
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"image: expected uint8 values or floats in [0, 1], got values in "
                         f"[{image.min():g}, {image.max():g}]")
    if image.ndim == 2:
        image = image[..., None]
    height, width, channels = image.shape
    bins = as_scalar(bins, "bins", minimum=1, integer=True)
    smoothing = as_scalar(smoothing, "smoothing", minimum=0.0)
    if n_labels is not None:
        n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
        if n_labels > MAX_LABELS:
            raise ValueError(f"n_labels: expected at most {MAX_LABELS} labels, got {n_labels}")
    # the values are checked before K is derived from them: K (the unary's last axis) stays bounded
    scribbles = as_label_map(scribbles, "scribbles", (height, width), n_labels or MAX_LABELS, unlabeled=unlabeled)
    scribbled = scribbles != unlabeled
    if not scribbled.any():
        raise ValueError(f"scribbles: expected at least one scribbled pixel, got only {unlabeled} (unlabeled)")
    if n_labels is None:
        n_labels = int(scribbles[scribbled].max()) + 1

    index = np.minimum((image * bins).astype(np.int64), bins - 1)
    flat_bin = np.ravel_multi_index(tuple(np.moveaxis(index, 2, 0)), (bins,) * channels)
    unary = np.empty((height, width, n_labels))
    for label in range(n_labels):
        counts = np.bincount(flat_bin[scribbles == label], minlength=bins ** channels).astype(float)
        counts = counts.reshape((bins,) * channels)
        if smoothing > 0:
            from scipy import ndimage  # imported here: SciPy costs ~0.3 s to import

            counts = ndimage.gaussian_filter(counts, smoothing, mode="constant")
        counts = counts.ravel() + 1.0 / counts.size
        unary[..., label] = -np.log(counts[flat_bin] / counts.sum())
    return unary
