"""Random scale / crop / flip augmentation of a :class:`~admsolve.data.datasets.Sample`, image,
scribbles and mask transformed together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .._validation import UNLABELED, as_int_pair, as_scalar, describe
from .datasets import Sample


def augment(sample: Sample, rng: np.random.Generator, *, crop_size: Sequence[int],
            scale: Sequence[float] = (0.75, 1.25), flip: bool = True, fill: Sequence[int] = (124, 116, 104)) -> Sample:
    """A randomly scaled, cropped and flipped copy of a sample.

    Scales by one factor drawn uniformly from `scale` (image bilinear, scribbles and mask nearest,
    via Pillow), pads the bottom and right to at least `crop_size` (the image with `fill`,
    scribbles and mask with `UNLABELED`), crops a random window of `crop_size`, and mirrors it left to
    right with probability 1/2 when `flip`. The crop's ``valid`` marks the pixels of the photograph
    (False on the padding, so that the losses leave it out): for a sample without ``valid``, the
    rectangle of the image within the window.

    Parameters
    ----------
    sample : Sample
        Left unchanged.
    rng : numpy.random.Generator
        The source of randomness; the same state gives the same output.
    crop_size : (int, int)
        (height, width) of the output.
    scale : (float, float), optional
        Range (lo, hi) of the scale factor, 0 < lo <= hi.
    flip : bool, optional
    fill : (int, int, int), optional
        RGB colour of the image's padding (the ImageNet mean by default).

    Returns
    -------
    Sample
        New arrays of shape `crop_size`; the mask stays None where it was None; ``valid`` is a bool
        array (the input's own ``valid``, if any, is cropped with the image).
    """
    if not isinstance(sample, Sample):
        raise TypeError(f"sample: expected a Sample, got {describe(sample)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {describe(rng)}")
    crop_h, crop_w = as_int_pair(crop_size, "crop_size")
    lo, hi = _check_scale(scale)
    fill = _check_fill(fill)
    image = np.asarray(sample.image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample.image: expected an (H, W, 3) uint8 array, got {describe(image)}")
    valid = np.ones(image.shape[:2], np.uint8) if sample.valid is None else np.asarray(sample.valid, np.uint8)
    planes = {"scribbles": sample.scribbles, "mask": sample.mask, "valid": valid}
    for name, plane in planes.items():
        if plane is not None and np.shape(plane) != image.shape[:2]:
            raise ValueError(f"sample.{name}: expected shape {image.shape[:2]} (the image's), "
                             f"got {describe(np.asarray(plane))}")

    factor = rng.uniform(lo, hi)
    height, width = image.shape[:2]
    size = (max(1, int(round(width * factor))), max(1, int(round(height * factor))))
    image = _resize(image, size, Image.Resampling.BILINEAR)
    planes = {k: None if v is None else _resize(np.asarray(v, np.uint8), size, Image.Resampling.NEAREST)
              for k, v in planes.items()}

    pad = ((0, max(crop_h - size[1], 0)), (0, max(crop_w - size[0], 0)))
    if pad[0][1] or pad[1][1]:
        image = np.stack([np.pad(image[..., c], pad, constant_values=fill[c]) for c in range(3)], 2)
        planes = {k: None if v is None else np.pad(v, pad, constant_values=0 if k == "valid" else UNLABELED)
                  for k, v in planes.items()}
    top = rng.integers(0, image.shape[0] - crop_h + 1)
    left = rng.integers(0, image.shape[1] - crop_w + 1)
    mirror = bool(flip) and rng.random() < 0.5
    step = -1 if mirror else 1

    def window(array):
        if array is None:
            return None
        return np.array(array[top:top + crop_h, left:left + crop_w][:, ::step])

    return Sample(sample.id, window(image), window(planes["scribbles"]), window(planes["mask"]),
                  window(planes["valid"]).astype(bool))


def _resize(array, size, resample):
    """`array` resized to size = (width, height) by Pillow, or a copy when the size is unchanged."""
    if size == (array.shape[1], array.shape[0]):
        return np.array(array)
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize(size, resample))


def _check_scale(scale):
    if isinstance(scale, (str, bytes)) or np.ndim(scale) != 1 or len(scale) != 2:
        raise ValueError(f"scale: expected a range (lo, hi), got {describe(scale)}")
    lo = as_scalar(scale[0], "scale[0]")
    hi = as_scalar(scale[1], "scale[1]")
    if not 0 < lo <= hi:
        raise ValueError(f"scale: expected 0 < lo <= hi, got {tuple(scale)!r}")
    return lo, hi


def _check_fill(fill):
    if isinstance(fill, (str, bytes)) or np.ndim(fill) != 1 or len(fill) != 3:
        raise ValueError(f"fill: expected an RGB colour of three integers, got {describe(fill)}")
    values = tuple(fill)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255
           for v in values):
        raise ValueError(f"fill: expected three integers in [0, 255], got {values!r}")
    return tuple(int(v) for v in values)
