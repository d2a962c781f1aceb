"""Reading images and label maps, writing label maps, overlays and contact sheets."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .._validation import UNLABELED

#: Colours of labels 0, 1, 2, ... in overlays (repeats after 21, the MSRC-21 / VOC class count).
PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (128, 128, 128),
], dtype=np.uint8)


def _open(path, name):
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {str(path)!r} as an image ({exc})") from None


def read_image(path):
    """Read an image file as an (H, W, 3) uint8 RGB array."""
    return np.asarray(_open(path, "image").convert("RGB"))


def read_label_map(path, name="scribbles"):
    """Read a single-channel label PNG (mode L or P, values are labels) as an (H, W) uint8 array."""
    image = _open(path, name)
    if image.mode not in ("L", "P", "I", "I;16"):
        raise ValueError(f"{name}: expected a single-channel label image (mode L or P) in "
                         f"{str(path)!r}, got mode {image.mode}")
    return np.asarray(image).astype(np.uint8) if image.mode in ("L", "P") else np.asarray(image)


def write_label_map(path, labels):
    """Write labels (values < 256) as a single-channel PNG."""
    Image.fromarray(np.asarray(labels).astype(np.uint8), mode="L").save(Path(path))


def colorize(labels):
    """(H, W, 3) uint8 picture of a label map in PALETTE colours."""
    return PALETTE[np.asarray(labels) % len(PALETTE)]


def overlay(image, labels, scribbles=None, *, unlabeled=UNLABELED, alpha=0.5):
    """Image blended with the label colours, scribbled pixels drawn in full colour on top."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    picture = (1 - alpha) * image + alpha * colorize(labels)
    if scribbles is not None:
        scribbled = scribbles != unlabeled
        picture[scribbled] = colorize(scribbles[scribbled])
    return np.clip(picture, 0, 255).astype(np.uint8)


def save_sheet(path, tiles, captions, *, columns=4):
    """Save equally sized (H, W, 3) uint8 tiles in a grid, each with a caption above it."""
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
    sheet.save(Path(path))
