"""What both forms of the permutohedral lattice share: the checks of their inputs, the normalisation
scalings, and the feature spaces of pydensecrf's kernels (see :mod:`admsolve.filters.lattice` for the
algorithm). NumPy only (no Numba), so the array-module form and the energies can use them freely.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
from numpy.typing import ArrayLike

from .._array import AnyArray, array_module
from .._validation import as_positive, as_real_array, describe

__all__ = [
    "MAX_ELEVATED",
    "NORMALIZATIONS",
    "as_features",
    "as_flag",
    "as_image",
    "as_values",
    "bilateral_features",
    "check_normalization",
    "gaussian_features",
    "normalization_scales",
    "within_range",
]

#: The accepted values of ``normalization`` (see the module docstring).
NORMALIZATIONS = ("symmetric", "after", "before", "none")

# The elevated coordinates are rounded in float32 (as in pydensecrf) and kept as int32 keys: they
# must stay below 2^24, where float32 still holds every integer.
MAX_ELEVATED = 2.0**23


def check_normalization(normalization: str) -> str:
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {NORMALIZATIONS}, got {describe(normalization)}")
    return normalization


def as_values(values: ArrayLike, n_points: int, name: str = "values") -> tuple[np.ndarray, bool]:
    """`values` as a C-contiguous (N, C) float64 array (a 1-D array is one channel), and whether it
    was 1-D. A float64 array is used as it is, without a copy; its entries must be finite."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64 and values.ndim in (1, 2) \
            and values.size > 0:
        array = np.ascontiguousarray(values)
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite entries")
    else:
        array = as_real_array(values, name, (1, 2))
    flat = array.ndim == 1
    if flat:
        array = array[:, None]
    if array.shape[0] != n_points:
        raise ValueError(
            f"{name}: expected {n_points} rows (one per feature point), got {describe(np.asarray(values))}"
        )
    return array, flat


def as_features(features: ArrayLike, name: str = "features") -> np.ndarray:
    features = as_real_array(features, name, 2)
    n, d = features.shape
    bound = MAX_ELEVATED / (2.0 * d * (d + 1))
    largest = max(float(features.max()), -float(features.min()))
    if largest > bound:
        raise ValueError(
            f"{name}: expected absolute values <= {bound:g} (the lattice is located in float32), "
            f"got maximum {largest:g}"
        )
    return np.ascontiguousarray(features)


def as_image(image: ArrayLike) -> np.ndarray:
    image = as_real_array(image, "image", 3)
    if image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got array of shape {image.shape}")
    return image


def as_flag(value: bool | np.bool_, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {describe(value)}")
    return bool(value)


def normalization_scales(ones_response: AnyArray, normalization: str, transpose: bool) -> tuple[AnyArray, AnyArray]:
    """(in_scale, out_scale): the diagonal scalings around the raw operator W that give
    `normalization` (or its transpose), from the raw filter of ones ``n = W 1``, on the array
    module of `ones_response`."""
    ones = ones_response * 0 + 1
    if normalization == "none":
        return ones, ones
    if normalization == "symmetric":
        scale = 1.0 / (ones_response + 1e-20) ** 0.5
        return scale, scale
    scale = 1.0 / (ones_response + 1e-20)
    if (normalization == "after") != transpose:
        return ones, scale
    return scale, ones


def within_range(run: Callable[[AnyArray], AnyArray], values: AnyArray, xp: ModuleType) -> AnyArray:
    """``run(values)``, the filter of (N, C) float64 `values` (an array of module `xp`), kept finite: a
    sum inside the filter that overflowed float64 is redone on the values scaled by a power of two
    (exact), the result scaled back; a result beyond float64's range raises a ValueError."""
    result = run(values)
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(xp.sum(result))):  # one reduction: finite entries, no overflow anywhere
            return result
        peak = float(xp.abs(values).max())
        exponent = int(np.frexp(peak)[1]) if peak > 0 else 0
        result = run(xp.ascontiguousarray(xp.ldexp(values, -exponent)))
        result = xp.ldexp(result, exponent, out=result)
        if not bool(xp.all(xp.isfinite(result))):
            raise ValueError(f"values: the filtered values exceed float64's range (largest |value| {peak:g}); "
                             f"scale the values down")
    return result


def gaussian_features(shape: Sequence[int], *, sxy: float) -> np.ndarray:
    """Features of pydensecrf's ``DenseCRF2D.addPairwiseGaussian``: [x / sxy, y / sxy].

    Parameters
    ----------
    shape : (int, int)
        (H, W) of the image.
    sxy : float
        Spatial standard deviation in pixels, > 0.

    Returns
    -------
    (H*W, 2) ndarray of float64
        Row ``y * W + x`` (raster order) is ``[x / sxy, y / sxy]``: column index first.
    """
    if (isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"shape: expected two positive integers (H, W), got {describe(shape)}")
    sxy = as_positive(sxy, "sxy")
    height, width = int(shape[0]), int(shape[1])
    features = np.empty((height, width, 2))
    features[..., 0] = np.arange(width, dtype=np.float64) / sxy
    features[..., 1] = (np.arange(height, dtype=np.float64) / sxy)[:, None]
    return features.reshape(height * width, 2)


def bilateral_features(image: ArrayLike, *, sxy: float, srgb: float) -> np.ndarray:
    """Features of pydensecrf's ``DenseCRF2D.addPairwiseBilateral``: [x/sxy, y/sxy, r/srgb, g/srgb, b/srgb].

    Parameters
    ----------
    image : (H, W, 3) array_like
        uint8 or float colours (used as they are, not rescaled); a CuPy array gives CuPy features.
    sxy : float
        Spatial standard deviation in pixels, > 0.
    srgb : float
        Colour standard deviation in the units of `image`, > 0.

    Returns
    -------
    (H*W, 5) ndarray of float64
        Row ``y * W + x`` (raster order); x is the column index. On the array module of `image`.

    Notes
    -----
    The order matters: the lattice is not invariant under a permutation of the feature dimensions
    (swapping x and y changes the filter by about 2%). This is the order of
    ``DenseCRF2D.addPairwiseBilateral``; ``pydensecrf.utils.create_pairwise_bilateral`` puts the
    row (y) first, so its features give a slightly different filter.
    """
    xp = array_module(image)
    if xp is np:
        image = as_image(image)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got array of shape {image.shape}")
    sxy = as_positive(sxy, "sxy")
    srgb = as_positive(srgb, "srgb")
    height, width, _ = image.shape
    features = xp.empty((height, width, 5))
    features[..., 0] = xp.arange(width, dtype=xp.float64) / sxy
    features[..., 1] = (xp.arange(height, dtype=xp.float64) / sxy)[:, None]
    xp.divide(image, srgb, out=features[..., 2:])
    return features.reshape(height * width, 5)
