"""The array module rule of the CuPy backends: the same code runs on NumPy (CPU, CI) and on CuPy
(GPU), taking the module from its input."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

#: A NumPy or a CuPy array, in annotations: CuPy is optional and untyped, so no precise type is given.
AnyArray = Any


def array_module(array: object) -> ModuleType:
    """cupy for a CuPy array, else numpy (without importing cupy when it is not in use)."""
    if type(array).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def device_of(array: object) -> str:
    """"cuda" for a CuPy array, else "cpu"."""
    return "cpu" if array_module(array) is np else "cuda"


def cuda_status() -> bool | str:
    """True if CuPy and a CUDA device can be used here, else the reason why not (a sentence)."""
    try:
        import cupy
    except ImportError:
        return "needs CuPy and a CUDA GPU: pip install 'admsolve[cuda]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError when no driver is present
        return f"CuPy finds no CUDA device ({exc})"
    return True if count > 0 else "CuPy finds no CUDA device"


def device_module(device: str) -> ModuleType:
    """The array module for ``device``: "cpu" -> numpy, "cuda" -> cupy (ImportError naming the extra)."""
    if device == "cpu":
        return np
    if device != "cuda":
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    try:
        import cupy
    except ImportError:
        raise ImportError("device='cuda' needs CuPy: pip install 'admsolve[cuda]'") from None
    if cupy.cuda.runtime.getDeviceCount() == 0:
        raise ValueError("device: 'cuda' was asked for, but no CUDA device is present")
    return cupy


def to_numpy(array: AnyArray) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array."""
    return array.get() if array_module(array) is not np else np.asarray(array)


#: Up to this many labels, reductions over the last (label) axis loop over the labels: NumPy reduces a
#: short last axis row by row, 10-20 times slower than elementwise operations on the label planes.
_FEW_LABELS = 8


def label_max(values):
    """``values.max(axis=-1)`` of an (..., K) array, fast for few labels (on NumPy or CuPy)."""
    if values.shape[-1] > _FEW_LABELS:
        return values.max(axis=-1)
    xp = array_module(values)
    out = values[..., 0].copy()
    for k in range(1, values.shape[-1]):
        xp.maximum(out, values[..., k], out=out)
    return out


def label_sum(values):
    """``values.sum(axis=-1)`` of an (..., K) array, fast for few labels: the labels added in order."""
    if values.shape[-1] > _FEW_LABELS:
        return values.sum(axis=-1)
    out = values[..., 0].copy()
    for k in range(1, values.shape[-1]):
        out += values[..., k]
    return out


def label_argmax(values):
    """``values.argmax(axis=-1)`` (the first largest on ties) of an (..., K) array, fast for few labels."""
    xp = array_module(values)
    if values.shape[-1] > _FEW_LABELS:
        return values.argmax(axis=-1)
    best = values[..., 0].copy()
    index = xp.zeros(best.shape, dtype=xp.int64)
    for k in range(1, values.shape[-1]):
        larger = values[..., k] > best
        index[larger] = k
        xp.maximum(best, values[..., k], out=best)
    return index
