"""Input checks shared by the public functions: each error names the argument, what was
expected and what arrived."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._array import array_module, to_numpy

#: The one value that marks a pixel as unlabeled: an unscribbled pixel in seeds and scribbles, a void
#: pixel in ground-truth masks, the ignored target of the losses.
UNLABELED = 255
#: The most labels a label map read from a picture or a scribble image can define (K is bounded before
#: anything of size K is allocated).
MAX_LABELS = 256


def describe(value: object) -> str:
    """Short description of what arrived, for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}" if np.isscalar(value) else type(value).__name__


def as_real_array(value: ArrayLike, name: str, ndim: int | Iterable[int], *, allow_negative: bool = True,
                  dtype: DTypeLike = np.float64) -> np.ndarray:
    """Return a new float array from `value`, checking dimensionality and finiteness."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name}: expected a real-valued array, got {describe(value)}")
    array = to_numpy(value) if array_module(value) is not np else np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name}: expected a real-valued array, got {describe(array)}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected a real-valued array, got {describe(array)}")
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if array.ndim not in ndims:
        wanted = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name}: expected a {wanted}-D array, got {describe(array)}")
    if array.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got {describe(array)}")
    array = np.array(array, dtype=dtype, copy=True)
    # A finite sum means finite entries (NaN and infinities propagate); only when it is not (or the sum
    # overflowed) are the entries checked one by one. The sum is one fast pass with no temporary array.
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, or finite values overflowing the sum
        total = array.sum()
    if not np.isfinite(total) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite entries")
    if not allow_negative and np.any(array < 0):
        raise ValueError(f"{name}: expected non-negative values, got minimum {array.min():g}")
    return array


def as_label_map(value: ArrayLike, name: str, shape: Sequence[int], n_labels: int, *,
                 unlabeled: int | None = None) -> np.ndarray:
    """Return a new int32 label map of `shape` with values in [0, n_labels) (or `unlabeled`)."""
    array = to_numpy(value) if array_module(value) is not np else np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got {describe(array)}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {describe(array)}")
    valid = (array >= 0) & (array < n_labels)
    if unlabeled is not None:
        valid |= array == unlabeled
    if not np.all(valid):
        bad = np.unique(array[~valid])[:5].tolist()
        allowed = f"[0, {n_labels})" + ("" if unlabeled is None else f" or {unlabeled} (unlabeled)")
        raise ValueError(f"{name}: expected values in {allowed}, got {bad}")
    return array.astype(np.int32)


@overload
def as_scalar(value: Any, name: str, *, minimum: float | None = None, integer: Literal[True]) -> int: ...
@overload
def as_scalar(value: Any, name: str, *, minimum: float | None = None, integer: Literal[False] = False) -> float: ...
@overload
def as_scalar(value: Any, name: str, *, minimum: float | None = None, integer: bool = False) -> int | float: ...
def as_scalar(value: Any, name: str, *, minimum: float | None = None, integer: bool = False) -> int | float:
    """Check a finite real (or integer) scalar, optionally bounded below."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a real number"
        raise TypeError(f"{name}: expected {kind}, got {describe(value)}")
    if not np.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected a value >= {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def as_positive(value: Any, name: str) -> float:
    """Check a finite real scalar > 0."""
    value = as_scalar(value, name)
    if not value > 0:
        raise ValueError(f"{name}: expected a value > 0, got {value!r}")
    return value


def as_int_pair(value: Any, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Two integers >= minimum (height, width), as a tuple."""
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1 or len(value) != 2:
        raise ValueError(f"{name}: expected two integers (height, width), got {describe(value)}")
    pair = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum
           for v in pair):
        raise ValueError(f"{name}: expected two integers >= {minimum} (height, width), "
                         f"got {pair!r}")
    return tuple(int(v) for v in pair)


def as_connectivity(value: Any, name: str = "connectivity") -> int:
    """4 or 8, the neighbourhood of a grid CRF."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected 4 or 8, got {describe(value)}")
    if value not in (4, 8):
        raise ValueError(f"{name}: expected 4 or 8, got {describe(value)}")
    return int(value)
