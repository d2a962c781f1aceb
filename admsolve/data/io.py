"""Reading images and label maps, writing label maps, overlays and contact sheets (every file written
atomically, through :func:`write_atomically`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

from .._files import atomic_file
from .._validation import UNLABELED

#: Colours of labels 0, 1, 2, ... in overlays (repeats after 21, the MSRC-21 / VOC class count).
PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (128, 128, 128),
], dtype=np.uint8)
#: Colour of UNLABELED (void, unscribbled) pixels in a label map's palette.
VOID_COLOUR = (255, 255, 255)


#: File types a label map is written to: lossless ones only (JPEG would change the labels).
LABEL_MAP_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
#: Pillow modes of 16-bit grey pictures (and "I", 32-bit integers, read as 16-bit values).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _open(path, name):
    """The Pillow image in `path`, loaded; a one-line ValueError naming the file when it cannot be read,
    also when it has more pixels than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{name}: {str(path)!r} is larger than Pillow's safety limit of {Image.MAX_IMAGE_PIXELS} "
                         f"pixels ({_one_line(exc)}); raise PIL.Image.MAX_IMAGE_PIXELS to read a file you "
                         f"trust") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{name}: cannot read {str(path)!r} as an image ({_one_line(exc)})") from None


def _one_line(exc):
    """The first line of an exception's message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def probe_image(path: str | os.PathLike[str], name: str = "image") -> tuple[int, int]:
    """(height, width) of the picture in `path`, from its header only (cheap: checks that a file is an image
    before any work); a one-line ValueError naming the file when it is not one."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name}: cannot read {str(path)!r} as an image ({_one_line(exc)})") from None


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an (H, W, 3) uint8 RGB array.

    16-bit pictures keep their full range, scaled to 8 bits (``round(v / 257)``: a 16-bit copy of
    an 8-bit picture, ``v * 257``, reads back exactly). Pillow reads 16-bit RGB(A) PNGs as 8 bits per
    channel itself; 16-bit grey (mode ``I;16``) is converted here, as ``convert("RGB")`` would clip it
    at 255.
    """
    image = _open(path, "image")
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise ValueError(f"image: expected 16-bit values (0..65535) in {str(path)!r}, got values in "
                             f"[{grey.min()}, {grey.max()}]")
        grey = np.rint(grey / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError(f"image: expected an 8- or 16-bit picture in {str(path)!r}, got 32-bit floats (mode F)")
    return np.asarray(image.convert("RGB"))


def read_label_map(path: str | os.PathLike[str], name: str = "scribbles") -> np.ndarray:
    """Read a single-channel label map as an (H, W) uint8 array: a PNG or TIFF of mode L or P (the
    values are labels), a 16-bit one whose values are at most 255, or a ``.npy`` file of integers.
    Values above 255 are refused (with the first of them and where it is) before anything is
    derived from them."""
    if Path(path).suffix.lower() == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{name}: cannot read {str(path)!r} as a label map ({_one_line(exc)})") from None
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name}: expected a 2-D integer array in {str(path)!r}, got array of shape "
                             f"{labels.shape} and dtype {labels.dtype}")
        mode = "npy"
    else:
        image = _open(path, name)
        if image.mode not in ("L", "P") + SIXTEEN_BIT_MODES:
            raise ValueError(f"{name}: expected a single-channel label image (mode L or P) in "
                             f"{str(path)!r}, got mode {image.mode}")
        labels, mode = np.asarray(image), image.mode
    if mode not in ("L", "P"):
        bad = (labels < 0) | (labels > UNLABELED)
        if bad.any():
            row, col = np.argwhere(bad)[0].tolist()
            raise ValueError(f"{name}: expected values 0..{UNLABELED - 1} (labels) or {UNLABELED} (unlabeled) in "
                             f"{str(path)!r}, got {int(labels[row, col])} at row {row}, column {col}")
    return labels.astype(np.uint8)


def check_label_map_path(path: str | os.PathLike[str], name: str = "output") -> Path:
    """`path` as a Path if a label map can be written there losslessly (.png, .tif, .tiff, .npy), else a
    ValueError saying why (a folder, no extension, a lossy or unknown one)."""
    path = Path(path)
    wanted = ", ".join(LABEL_MAP_SUFFIXES)
    if path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder; expected a label-map file name ending in {wanted}")
    suffix = path.suffix.lower()
    if suffix not in LABEL_MAP_SUFFIXES:
        why = "no extension" if not suffix else (f"{suffix} is lossy and would change the labels"
                                                 if suffix in (".jpg", ".jpeg", ".webp", ".jp2") else
                                                 f"{suffix} is not a lossless label-map format")
        raise ValueError(f"{name}: expected a file name ending in {wanted}, got {str(path)!r} ({why})")
    return path


def check_image_path(path: str | os.PathLike[str], name: str = "output") -> Path:
    """`path` as a Path if Pillow can write a picture there (its extension names a format it saves)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder; expected an image file name such as picture.png")
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise ValueError(f"{name}: expected an image file name whose extension Pillow writes (.png, .jpg, .tif, ...), "
                         f"got {str(path)!r}")
    return path


def write_atomically(path: str | os.PathLike[str], write: Callable[[object], object]) -> None:
    """Call ``write(stream)`` on a binary file whose contents replace `path` as a whole when it returns
    (:func:`admsolve._files.atomic_file`): `path` holds its old content (or nothing) until the new one is
    whole, and a failed write names the file and leaves it as it was."""
    with atomic_file(path) as stream:
        write(stream)


def label_palette() -> list[int]:
    """The 256 colours of a label map's palette, flattened (r, g, b, r, ...): label k in PALETTE's colour
    (as :func:`colorize`), UNLABELED in :data:`VOID_COLOUR`."""
    colours = colorize(np.arange(256))
    colours[UNLABELED] = VOID_COLOUR
    return colours.ravel().tolist()


def write_label_map(path: str | os.PathLike[str], labels: ArrayLike, name: str = "output") -> None:
    """Write labels (values 0..255) as a single-channel PNG or TIFF with a palette (pixel value = label,
    shown in :func:`label_palette`'s colours by any viewer), or as a ``.npy`` array of uint8; other file
    types are refused (see :func:`check_label_map_path`). The file is written atomically."""
    path = check_label_map_path(path, name)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"labels: expected a 2-D array of values 0..255, got array of shape {labels.shape}")
    labels = labels.astype(np.uint8)
    if path.suffix.lower() == ".npy":
        write_atomically(path, lambda stream: np.save(stream, labels))
        return
    picture = Image.fromarray(labels)
    picture.putpalette(label_palette())  # mode P, the same values
    write_image(path, picture, name)


def write_image(path: str | os.PathLike[str], picture: ArrayLike | Image.Image, name: str = "output",
                **options) -> None:
    """Write a picture ((H, W, 3) uint8 array or a Pillow image) in the format its extension names
    (`options` go to ``Image.save``), atomically (:func:`write_atomically`)."""
    path = check_image_path(path, name)
    picture = picture if isinstance(picture, Image.Image) else Image.fromarray(np.asarray(picture))
    file_format = Image.registered_extensions()[path.suffix.lower()]
    write_atomically(path, lambda stream: picture.save(stream, format=file_format, **options))


def colorize(labels: ArrayLike) -> np.ndarray:
    """(H, W, 3) uint8 picture of a label map in PALETTE colours."""
    return PALETTE[np.asarray(labels) % len(PALETTE)]


def overlay(image: ArrayLike, labels: ArrayLike, scribbles: np.ndarray | None = None, *, unlabeled: int = UNLABELED,
            alpha: float = 0.5) -> np.ndarray:
    """Image blended with the label colours, scribbled pixels drawn in full colour on top."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    picture = (1 - alpha) * image + alpha * colorize(labels)
    if scribbles is not None:
        scribbled = scribbles != unlabeled
        picture[scribbled] = colorize(scribbles[scribbled])
    return np.clip(picture, 0, 255).astype(np.uint8)


def save_sheet(path: str | os.PathLike[str], tiles: Sequence[np.ndarray], captions: Sequence[str], *,
               columns: int = 4) -> None:
    """Save equally sized (H, W, 3) uint8 tiles in a grid, each with a caption above it."""
    path = check_image_path(path, "sheet")
    height, width = tiles[0].shape[:2]
    caption_height = 14
    rows = -(-len(tiles) // columns)
    columns = min(columns, len(tiles))
    sheet = Image.new("RGB", (columns * width, rows * (height + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (i % columns) * width, (i // columns) * (height + caption_height)
        draw.text((x + 3, y + 1), caption, fill="black")
        sheet.paste(Image.fromarray(tile), (x, y + caption_height))
    write_image(path, sheet, "sheet")
