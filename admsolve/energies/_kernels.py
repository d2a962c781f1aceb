"""The compiled arithmetic of the energies' construction: the contrast weights of eq. 2 and the ADM unary
of eq. 8. :func:`~admsolve.energies.contrast_weights` and :func:`~admsolve.energies.adm_unary` check
their inputs and call these; ADM's compiled latent step (:mod:`admsolve.backends.expansion_batch`) calls
them on each image of a batch, so that both build bit-identical problems. Imported when first used
(Numba is not loaded by ``import admsolve``)."""

import math

import numpy as np
from numba import njit

from .gridcrf import OFFSETS as _OFFSETS


@njit(inline="always")
def adm_cost(prob, gamma, eps):
    """The ADM unary of one probability: ``-gamma * log(max(prob, eps))``."""
    return -gamma * math.log(max(prob, eps))


@njit(nogil=True, cache=True)
def adm_unary_into(probs, gamma, eps, out):
    """out[i] = adm_cost(probs[i]) for 1-D arrays of equal size."""
    for i in range(probs.size):
        out[i] = adm_cost(probs[i], gamma, eps)


@njit(nogil=True, cache=True, error_model="numpy")
def contrast_weights_into(image, mask, sigma2, out):
    """Write the contrast weights of (H, W, C) float64 `image` into `out` (D, H, W), D = 2 or 4, all zero
    on entry: ``exp(-||I_p - I_q||^2 / (2 sigma^2))``, divided by sqrt(2) on diagonals, for the edges
    whose two ends are inside the image and the (H, W) bool `mask`; the others stay 0. `sigma2` < 0:
    the Boykov-Jolly rule, the mean of ||I_p - I_q||^2 over those edges (weights 1 where that mean is 0);
    a given `sigma2` >= 0 (0 or inf where it underflowed or overflowed) gives weight 1 to equal colours
    and the limits of the exponential elsewhere. Squared differences are summed channel by channel."""
    n_directions, height, width = out.shape
    total, count = 0.0, 0
    for d in range(n_directions):
        dy, dx = _OFFSETS[d]
        for y in range(height - dy):
            for x in range(max(0, -dx), width - max(0, dx)):
                if mask[y, x] and mask[y + dy, x + dx]:
                    squared = 0.0
                    for c in range(image.shape[2]):
                        diff = image[y, x, c] - image[y + dy, x + dx, c]
                        squared += diff * diff
                    out[d, y, x] = squared
                    total += squared
                    count += 1
    given = sigma2 >= 0
    if not given:
        sigma2 = total / count if count > 0 else 0.0
    diagonal = np.sqrt(2.0)
    for d in range(n_directions):
        dy, dx = _OFFSETS[d]
        for y in range(height - dy):
            for x in range(max(0, -dx), width - max(0, dx)):
                if mask[y, x] and mask[y + dy, x + dx]:
                    squared = out[d, y, x]
                    if (given and squared != 0.0) or (not given and sigma2 > 0):
                        weight = math.exp(squared / (-2.0 * sigma2))
                    else:  # equal colours under a given sigma (which may have underflowed), or a constant image
                        weight = 1.0
                    out[d, y, x] = weight / diagonal if d >= 2 else weight
