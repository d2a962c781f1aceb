"""Datasets for scribble-supervised training: folders of images, masks and scribbles (the layout of
../shared/data), PASCAL VOC 2012 with ScribbleSup scribbles, and a generated built-in set, plus the
random scale / crop / flip augmentation used in training.

Every dataset yields :class:`Sample` tuples of read-only NumPy arrays, loaded on first access and
kept in memory. Scribbles missing from a dataset are made from its masks by
:func:`admsolve.data.scribbles.generate_scribbles`, seeded per image from (seed, id), so every process
sees the same strokes.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
from scipy import ndimage

from .._validation import UNLABELED, as_int_pair, as_scalar, describe
from .io import read_image, read_label_map
from .scribbles import generate_scribbles

#: The 21 PASCAL VOC 2012 classes, in label order.
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # in order of preference when an id has several
_SHOWN = 5  # missing paths quoted in an error message


class Sample(NamedTuple):
    """One training or evaluation example.

    Attributes
    ----------
    id : str
        The image's id in its dataset.
    image : (H, W, 3) ndarray of uint8
        RGB image.
    scribbles : (H, W) ndarray of uint8
        Scribbled label 0..K-1, `UNLABELED` (255) where unscribbled.
    mask : (H, W) ndarray of uint8 or None
        Ground-truth labels, `UNLABELED` where void; None where the dataset has no mask for the image.
    valid : (H, W) ndarray of bool or None
        The pixels of the photograph, False on padding added by
        :func:`~admsolve.data.augment.augment` (kept out of every loss); None: every pixel.
    """

    id: str
    image: np.ndarray
    scribbles: np.ndarray
    mask: np.ndarray | None
    valid: np.ndarray | None = None


class DatasetLike(Protocol):
    """What every dataset of this module offers (for annotations): its samples by index, and these
    attributes (see :class:`FolderDataset`)."""

    @property
    def split(self) -> str: ...
    @property
    def ids(self) -> list[str]: ...
    @property
    def n_labels(self) -> int: ...
    @property
    def class_names(self) -> list[str]: ...
    @property
    def root(self) -> Path | None: ...
    @property
    def scribble_source(self) -> str: ...
    @property
    def unmasked(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...


def _read_only(array):
    array = np.asarray(array)
    array.flags.writeable = False
    return array


def _check_seed(seed):
    return as_scalar(seed, "seed", minimum=0, integer=True)


def _check_length(scribble_length):
    length = as_scalar(scribble_length, "scribble_length")
    if not 0.0 <= length <= 1.0:
        raise ValueError(f"scribble_length: expected a value in [0, 1], got {scribble_length!r}")
    return length


def _image_seed(seed, image_id):
    """Seed of one image's generated scribbles: the same in every process (unlike hash())."""
    return zlib.crc32(image_id.encode("utf-8")) ^ seed


def _read_ids(split, folder):
    """Ids listed in folder/<split>.txt, one a line, blank lines ignored."""
    if not isinstance(split, str) or not split:
        raise TypeError(f"split: expected a split name such as 'train', got {describe(split)}")
    path = folder / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        known = ", ".join(repr(name) for name in found) if found else "none"
        raise FileNotFoundError(f"split: no split file {str(path)!r} for split {split!r}; "
                                f"splits found in {str(folder)!r}: {known}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split: {str(path)!r} lists no image ids")
    return ids


def _find_images(folder, ids):
    """Path of each id's image in `folder` (.png, .jpg or .jpeg), or None when it has none."""
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            suffix = path.suffix.lower()
            if suffix in _IMAGE_SUFFIXES:
                rank = _IMAGE_SUFFIXES.index(suffix)
                if path.stem not in found or rank < found[path.stem][0]:
                    found[path.stem] = (rank, path)
    return [found[i][1] if i in found else None for i in ids]


def _check_present(expected, listing):
    """Raise FileNotFoundError listing the paths in `expected` that are not files."""
    missing = [str(path) for path in expected if not path.is_file()]
    if missing:
        shown = ", ".join(repr(path) for path in missing[:_SHOWN])
        more = f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        raise FileNotFoundError(f"{len(missing)} of the files for the ids in {str(listing)!r} "
                                f"are missing: {shown}{more}")


def _resolve_scribbles(root, scribbles, auto):
    """The scribble folder named by `scribbles` ("auto": `auto`), or None to generate them."""
    if not isinstance(scribbles, str) or not scribbles:
        raise TypeError(f"scribbles: expected 'auto', 'generate' or a folder name, "
                        f"got {describe(scribbles)}")
    if scribbles == "generate":
        return None
    if scribbles == "auto":
        return auto
    folder = root / scribbles
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and "scribble" in p.name)
        known = ", ".join(repr(name) for name in found) if found else "none"
        raise FileNotFoundError(f"scribbles: no scribble folder {str(folder)!r}; scribble "
                                f"folders in {str(root)!r}: {known} (or 'generate' from the masks)")
    return folder


def _class_names(path, masks_name):
    """Class names in a classes.json: a list of names, a dict index -> name or name -> index, or a
    dict of such lists keyed by mask folder (the key's first word, e.g. "masks (21 classes)")."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"classes: cannot read {str(path)!r} as JSON ({exc})") from None
    if isinstance(content, dict) and content and all(isinstance(v, list) for v in content.values()):
        matches = [v for k, v in content.items() if k.split("(")[0].split()[0:1] == [masks_name]]
        if len(matches) != 1 and len(content) > 1:
            raise ValueError(f"classes: {str(path)!r} holds several class lists "
                             f"({', '.join(map(repr, content))}) and none is keyed {masks_name!r}")
        content = matches[0] if matches else next(iter(content.values()))
    if isinstance(content, dict) and all(isinstance(v, str) for v in content.values()):
        try:
            content = [name for _, name in sorted((int(k), v) for k, v in content.items())]
        except ValueError:
            content = None
    elif isinstance(content, dict) and all(isinstance(v, int) for v in content.values()):
        content = sorted(content, key=content.get)
    if not isinstance(content, list) or not content or not all(isinstance(n, str) for n in content):
        raise ValueError(f"classes: expected a list of class names in {str(path)!r}, "
                         f"got {describe(content)}")
    return content


class _LabelledFolders:
    """A dataset given the paths of each id's image, mask (None: the image has none) and (optional)
    scribbles. The public datasets resolve their layout's paths and hand them here; loading and checks
    live here. Every image needs scribbles, or a mask to generate them from."""

    def __init__(self, root, split, ids, images, masks, scribble_dir, *, listing, n_labels,
                 class_names, scribble_length, seed, cache):
        self.root = root
        self.split = split
        self.ids = list(ids)
        self.n_labels = int(n_labels)
        self.class_names = list(class_names)
        self._images = images
        self._masks = masks
        self.unmasked = [image_id for image_id, mask in zip(self.ids, masks) if mask is None]
        if scribble_dir is None and self.unmasked:
            shown = ", ".join(repr(i) for i in self.unmasked[:_SHOWN])
            more = f" and {len(self.unmasked) - _SHOWN} more" if len(self.unmasked) > _SHOWN else ""
            raise FileNotFoundError(f"scribbles: {len(self.unmasked)} images of {str(listing)!r} have neither "
                                    f"scribbles (no scribbles*/ folder in {str(root)!r}) nor a mask to generate "
                                    f"them from: {shown}{more}")
        self._scribbles = None if scribble_dir is None else [scribble_dir / f"{i}.png" for i in ids]
        self._length = scribble_length
        self._seed = seed
        if scribble_dir is None:
            self.scribble_source = f"generated (length {scribble_length:g}, seed {seed})"
        else:
            self.scribble_source = scribble_dir.name
        self._cache = {} if cache else None
        _check_present(self._images + [m for m in masks if m is not None] + (self._scribbles or []), listing)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}: {len(self)} "
                f"images, {self.n_labels} labels, scribbles {self.scribble_source})")

    def __getitem__(self, index: int) -> Sample:
        index = _check_index(index, len(self))
        if self._cache is None:
            return self._load(index)
        if index not in self._cache:
            self._cache[index] = self._load(index)
        return self._cache[index]

    def _labels(self, path, name):
        """A label map with values < n_labels or UNLABELED, as uint8."""
        labels = read_label_map(path, name)
        bad = np.unique(labels[(labels >= self.n_labels) & (labels != UNLABELED)])
        if bad.size:
            raise ValueError(f"{name}: {str(path)!r} holds values {bad[:8].tolist()}, expected "
                             f"labels below K = {self.n_labels} or {UNLABELED} ({name} void)")
        return labels.astype(np.uint8)

    def _load(self, index):
        image_id = self.ids[index]
        image_path, mask_path = self._images[index], self._masks[index]
        image = read_image(image_path)
        mask = None if mask_path is None else self._labels(mask_path, "mask")
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"mask: {str(mask_path)!r} is {_size(mask)} but image "
                             f"{str(image_path)!r} is {_size(image)} (id {image_id!r})")
        if self._scribbles is None:
            scribbles = generate_scribbles(mask, length=self._length, unlabeled=UNLABELED,
                                           seed=_image_seed(self._seed, image_id))
            if np.all(scribbles == UNLABELED):
                raise ValueError(f"scribbles: no scribbled pixel generated for id {image_id!r}: "
                                 f"the mask {str(mask_path)!r} has no labelled region")
        else:
            path = self._scribbles[index]
            scribbles = self._labels(path, "scribbles")
            if scribbles.shape != image.shape[:2]:
                raise ValueError(f"scribbles: {str(path)!r} is {_size(scribbles)} but image "
                                 f"{str(image_path)!r} is {_size(image)} (id {image_id!r})")
            if np.all(scribbles == UNLABELED):
                raise ValueError(f"scribbles: no scribbled pixel in {str(path)!r} "
                                 f"(id {image_id!r})")
        return Sample(image_id, _read_only(image), _read_only(scribbles), None if mask is None else _read_only(mask))


def _size(array):
    return f"{array.shape[1]}x{array.shape[0]} (WxH)"


def _check_index(index, length):
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index: expected an integer, got {describe(index)}")
    if not -length <= index < length:
        raise IndexError(f"index: {int(index)} out of range for a dataset of {length} images")
    return int(index) % length


def _existing_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: no dataset directory {str(root)!r}")
    return root


class FolderDataset(_LabelledFolders):
    """Images, masks and optional scribbles in the layout of ../shared/data/<name>.

    ``root/images/<id>.(png|jpg|jpeg)``, ``root/masks/<id>.png`` (255 void), optional
    ``root/scribbles*/<id>.png`` (255 unscribbled), ``root/<split>.txt`` id lists (``list.txt``:
    all ids) and optional ``root/classes.json`` (class names). Masks are optional where there are
    scribbles (an image without one has ``mask=None``, and is listed in ``unmasked``); generated
    scribbles need every image's mask.

    Parameters
    ----------
    root : str or Path
        The dataset's directory.
    split : str, optional
        Reads the ids from ``root/<split>.txt``.
    scribbles : str, optional
        "auto": the first folder (by name) under `root` whose name starts with "scribbles", or
        generated from the masks where there is none; "generate": always generated from the masks;
        any other value: the name of a scribble folder under `root`.
    scribble_length : float, optional
        Fraction in [0, 1] of each generated stroke kept (see `generate_scribbles`).
    seed : int, optional
        Seed of the generated scribbles, combined with each image's id.
    n_labels : int, optional
        The number of labels K where there is no classes.json; by default the largest non-void
        value in the masks and scribbles found (those of the ids in ``list.txt``, else every file of
        ``masks/`` and the scribble folder) plus one.
    cache : bool, optional
        Keep each sample in memory once loaded (the default: these datasets are small, and
        generating scribbles costs more than keeping them).

    Attributes
    ----------
    root : Path
    split : str
    ids : list of str
    n_labels : int
    class_names : list of str
    scribble_source : str
        The scribble folder's name, or "generated (length L, seed S)".
    unmasked : list of str
        The ids whose image has no mask.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, scribbles: str = "auto",
                 scribble_length: float = 1.0, seed: int = 0, n_labels: int | None = None, cache: bool = True) -> None:
        root = _existing_root(root)
        scribble_length, seed = _check_length(scribble_length), _check_seed(seed)
        ids = _read_ids(split, root)
        found = _find_images(root / "images", ids)
        images = [path or root / "images" / f"{i}.png" for i, path in zip(ids, found)]
        masks = [path if path.is_file() else None for path in (root / "masks" / f"{i}.png" for i in ids)]
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("scribbles"))
        scribble_dir = _resolve_scribbles(root, scribbles, folders[0] if folders else None)
        listing = root / f"{split}.txt"
        names = None
        if (root / "classes.json").is_file():
            names = _class_names(root / "classes.json", "masks")
            if n_labels is not None and as_scalar(n_labels, "n_labels", integer=True) != len(names):
                raise ValueError(f"n_labels: {str(root / 'classes.json')!r} names {len(names)} "
                                 f"classes, got n_labels={n_labels!r}")
            n_labels = len(names)
        elif n_labels is not None:
            n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
            if n_labels > UNLABELED:
                raise ValueError(f"n_labels: expected at most {UNLABELED} labels, got {n_labels}")
        else:
            n_labels = _count_labels(root, scribble_dir)
        super().__init__(root, split, ids, images, masks, scribble_dir, listing=listing,
                         n_labels=n_labels, class_names=names or [str(k) for k in range(n_labels)],
                         scribble_length=scribble_length, seed=seed, cache=cache)


def _count_labels(root, scribble_dir):
    """Largest non-void value in the masks and scribbles found, plus one: those of the ids of list.txt
    where there is one, else every PNG in masks/ and `scribble_dir` (None: generated scribbles)."""
    folders = [root / "masks"] + ([] if scribble_dir is None else [scribble_dir])
    if (root / "list.txt").is_file():
        ids = _read_ids("list", root)
        paths = [folder / f"{i}.png" for folder in folders for i in ids]
    else:
        paths = sorted(path for folder in folders if folder.is_dir() for path in folder.glob("*.png"))
    top = -1
    for path in paths:
        if path.is_file():
            labels = read_label_map(path, "scribbles" if path.parent == scribble_dir else "mask")
            labels = labels[labels != UNLABELED]
            if labels.size:
                top = max(top, int(labels.max()))
    if top < 0:
        raise ValueError(f"n_labels: the masks and scribbles of {str(root)!r} hold no labelled pixel; "
                         f"pass n_labels or write classes.json")
    return top + 1


class VOCDataset(_LabelledFolders):
    """PASCAL VOC 2012 with ScribbleSup scribbles.

    ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClassAug/<id>.png`` (else
    ``root/SegmentationClass/``), ``root/ImageSets/Segmentation/<split>.txt``, and the ScribbleSup
    scribbles converted to PNG as rloss uses them, ``root/pascal_2012_scribble/<id>.png``
    (255 unlabeled).

    Parameters
    ----------
    root : str or Path
        The VOC2012 directory (the one holding JPEGImages/).
    split : str, optional
        Reads the ids from ``root/ImageSets/Segmentation/<split>.txt``.
    scribbles : str, optional
        "auto": pascal_2012_scribble/ where present, else generated from the masks; "generate";
        or the name of a scribble folder under `root`.
    scribble_length, seed : optional
        As in `FolderDataset`, for generated scribbles.
    cache : bool, optional
        Keep loaded samples in memory. Off by default here: the augmented training set's 10,582
        images would take about 9 GB.

    Attributes
    ----------
    As `FolderDataset`; n_labels is 21 and class_names `VOC_CLASSES`.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, scribbles: str = "auto",
                 scribble_length: float = 1.0, seed: int = 0, cache: bool = False) -> None:
        root = _existing_root(root)
        scribble_length, seed = _check_length(scribble_length), _check_seed(seed)
        lists = root / "ImageSets" / "Segmentation"
        ids = _read_ids(split, lists)
        mask_dir = root / "SegmentationClassAug"
        if not mask_dir.is_dir():
            mask_dir = root / "SegmentationClass"
        images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
        masks = [mask_dir / f"{i}.png" for i in ids]
        auto = root / "pascal_2012_scribble"
        scribble_dir = _resolve_scribbles(root, scribbles, auto if auto.is_dir() else None)
        super().__init__(root, split, ids, images, masks, scribble_dir,
                         listing=lists / f"{split}.txt", n_labels=len(VOC_CLASSES),
                         class_names=VOC_CLASSES, scribble_length=scribble_length, seed=seed, cache=cache)


def _hue_colours(n_labels):
    """A fixed base colour per label (the same for every split and seed): evenly spaced hues."""
    hue = (np.arange(n_labels) * 0.618034 + 0.1) % 1.0  # golden-ratio steps keep neighbours apart
    sector = hue * 6.0
    rgb = np.clip(np.abs((sector[:, None] + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0, 1)
    return 75.0 + 100.0 * rgb  # saturation and value kept moderate so jitter can bridge labels


class SyntheticDataset:
    """The built-in default: generated scenes, so training runs with no data at all.

    Each image is a smooth coloured background (label 0) with one to three objects (ellipses,
    blobs or rectangles covering 8-35% of the image each) of labels 1..K-1. Every label has a base
    colour, but a per-image colour jitter and smooth noise make the colours of different labels
    overlap, while the edges between regions stay sharp: a network trained on scribbles alone
    leaks across boundaries that a contrast-sensitive regulariser keeps. Masks are exact (no void);
    scribbles are generated from them.

    Parameters
    ----------
    split : {"train", "val"}, optional
    n_images : int, optional
        Number of images; 32 for "train", 16 for "val" by default.
    size : (int, int), optional
        (height, width) of the images, at least 16 each.
    n_labels : int, optional
        K, at least 2.
    seed : int, optional
        Seed of the scenes and their scribbles; the splits and images get different streams.
    scribble_length : float, optional
        Fraction in [0, 1] of each generated stroke kept (see `generate_scribbles`).

    Attributes
    ----------
    root : None
    split : str
    ids : list of str
        "synthetic-<split>-000", ...
    n_labels : int
    class_names : list of str
        "background", "object 1", ...
    scribble_source : str
    """

    _SPLITS = {"train": (0, 32), "val": (1, 16)}  # stream number and default size

    def __init__(self, split: str = "train", *, n_images: int | None = None, size: Sequence[int] = (96, 96),
                 n_labels: int = 3, seed: int = 0, scribble_length: float = 1.0) -> None:
        if split not in self._SPLITS:
            raise ValueError(f"split: expected 'train' or 'val' for the synthetic dataset, "
                             f"got {describe(split)}")
        stream, default_count = self._SPLITS[split]
        n_images = default_count if n_images is None else as_scalar(n_images, "n_images", minimum=1,
                                                                     integer=True)
        self.size = as_int_pair(size, "size", minimum=16)
        self.n_labels = as_scalar(n_labels, "n_labels", minimum=2, integer=True)
        if self.n_labels > UNLABELED:
            raise ValueError(f"n_labels: expected at most {UNLABELED} labels, got {n_labels!r}")
        self._seed = _check_seed(seed)
        self._length = _check_length(scribble_length)
        self._stream = stream
        self.root = None
        self.split = split
        self.ids = [f"synthetic-{split}-{i:03d}" for i in range(n_images)]
        self.unmasked: list[str] = []
        self.class_names = ["background"] + [f"object {k}" for k in range(1, self.n_labels)]
        self.scribble_source = f"generated (length {self._length:g}, seed {self._seed})"
        self._colours = _hue_colours(self.n_labels)
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"SyntheticDataset(split={self.split!r}: {len(self)} images of "
                f"{self.size[0]}x{self.size[1]}, {self.n_labels} labels)")

    def __getitem__(self, index: int) -> Sample:
        index = _check_index(index, len(self))
        if index not in self._cache:
            self._cache[index] = self._make(index)
        return self._cache[index]

    def _make(self, index):
        rng = np.random.default_rng([self._seed, self._stream, index])
        height, width = self.size
        yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width], dtype=float)[:, None, None]
        mask = np.zeros((height, width), dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            area = rng.uniform(0.08, 0.35)
            shape = _object_shape(rng, yy, xx, area)
            mask[shape] = rng.integers(1, self.n_labels)

        labels = np.unique(mask)
        colours = np.zeros((self.n_labels, 3))
        colours[labels] = self._colours[labels] + rng.normal(0.0, 22.0, (labels.size, 3))
        image = colours[mask]
        # a smooth gradient over the whole image (lighting) and smooth noise per pixel
        gradient = rng.normal(0.0, 35.0, (2, 3))
        image += (yy - 0.5)[..., None] * gradient[0] + (xx - 0.5)[..., None] * gradient[1]
        noise = rng.standard_normal((2, height, width, 3), dtype=np.float32)
        smooth = ndimage.gaussian_filter(noise[0], (3, 3, 0))
        image += smooth * (30.0 / max(float(smooth.std()), 1e-6)) + 6.0 * noise[1]
        image = np.clip(image, 0, 255).astype(np.uint8)

        scribbles = generate_scribbles(mask, length=self._length, unlabeled=UNLABELED,
                                       seed=_image_seed(self._seed, self.ids[index]))
        return Sample(self.ids[index], _read_only(image), _read_only(scribbles), _read_only(mask))


def _object_shape(rng, yy, xx, area):
    """Boolean mask of an ellipse, blob or rectangle covering about `area` (a fraction of the
    image) at a random place; `yy`, `xx` are pixel coordinates as fractions of the image."""
    kind = rng.integers(3)  # ellipse, blob, rectangle
    base = area / (4.0 if kind == 2 else np.pi)  # product of the half-sizes ry * rx
    ry = np.sqrt(base * rng.uniform(0.6, 1.6))
    rx = base / ry
    ry, rx = min(ry, 0.48), min(rx, 0.48)
    cy, cx = rng.uniform(ry, 1 - ry), rng.uniform(rx, 1 - rx)
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    if kind == 2:
        return (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    radius = np.hypot(dy, dx)
    if kind == 1:  # a blob: an ellipse whose radius varies smoothly with the angle
        angle = np.arctan2(dy, dx)
        phases = rng.uniform(0, 2 * np.pi, 2)
        wobble = 1 + 0.18 * np.sin(2 * angle + phases[0]) + 0.12 * np.sin(3 * angle + phases[1])
        return radius <= wobble
    return radius <= 1


#: Share of the training split held back for choosing hyperparameters (every fifth image).
HOLDOUT_EVERY = 5
#: Splits derived from "train": the images used for fitting, and those held back for tuning.
DERIVED_SPLITS = ("train-fit", "train-holdout")


class Subset:
    """Some images of a dataset, by index (same samples, ids and labels).

    Parameters
    ----------
    dataset : a dataset of this module
    indices : sequence of int
    split : str
        The name of the subset (e.g. "train-holdout").
    """

    def __init__(self, dataset: DatasetLike, indices: Iterable[int], split: str) -> None:
        self.dataset, self.indices, self.split = dataset, [int(i) for i in indices], split
        self.ids = [dataset.ids[i] for i in self.indices]
        self.n_labels, self.class_names = dataset.n_labels, dataset.class_names
        self.root, self.scribble_source = dataset.root, dataset.scribble_source
        unmasked = set(dataset.unmasked)
        self.unmasked = [image_id for image_id in self.ids if image_id in unmasked]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[self.indices[_check_index(index, len(self))]]

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, split={self.split!r}: {len(self)} images)"


def held_out(dataset: DatasetLike, part: str) -> Subset:
    """The images of a training set used for fitting ("train-fit") or held back for choosing
    hyperparameters ("train-holdout": every :data:`HOLDOUT_EVERY`-th image, in listed order)."""
    if part not in DERIVED_SPLITS:
        raise ValueError(f"split: expected one of {', '.join(DERIVED_SPLITS)}, got {describe(part)}")
    if len(dataset) < HOLDOUT_EVERY:
        raise ValueError(f"split: {part!r} needs at least {HOLDOUT_EVERY} training images, got {len(dataset)}")
    holdout = [i for i in range(len(dataset)) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    chosen = holdout if part == "train-holdout" else sorted(set(range(len(dataset))) - set(holdout))
    return Subset(dataset, chosen, part)


class MaskSupervision:
    """A dataset whose scribbles are its full masks (void stays unlabeled): the fully supervised
    upper bound of Table 2, trained by the same loop."""

    def __init__(self, dataset: DatasetLike) -> None:
        if dataset.unmasked:
            raise ValueError(f"scribbles: 'masks' trains on the full masks, but {len(dataset.unmasked)} images of "
                             f"split {dataset.split!r} have none (first: {dataset.unmasked[0]!r})")
        self.dataset, self.split, self.ids = dataset, dataset.split, dataset.ids
        self.n_labels, self.class_names, self.root = dataset.n_labels, dataset.class_names, dataset.root
        self.scribble_source = "masks (full supervision)"
        self.unmasked: list[str] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        return Sample(sample.id, sample.image, sample.mask, sample.mask)

    def __repr__(self) -> str:
        return f"MaskSupervision({self.dataset!r})"


def open_dataset(data: str | os.PathLike[str], split: str = "train", *, scribbles: str = "auto",
                 scribble_length: float = 1.0, seed: int = 0) -> DatasetLike:
    """The dataset named by `data`.

    Parameters
    ----------
    data : str or Path
        "synthetic": the built-in `SyntheticDataset`; a directory holding JPEGImages/: a
        `VOCDataset`; any other directory: a `FolderDataset`.
    split : str, optional
        A split of the dataset, or one of :data:`DERIVED_SPLITS` (see :func:`held_out`).
    scribbles : str, optional
        As in `FolderDataset`; the synthetic dataset accepts only "auto" and "generate" (its
        scribbles are always generated); "masks" for every dataset gives the full masks as
        scribbles (:class:`MaskSupervision`).
    scribble_length : float, optional
    seed : int, optional

    Returns
    -------
    SyntheticDataset, VOCDataset, FolderDataset, or a Subset / MaskSupervision of one
    """
    if split in DERIVED_SPLITS:
        return held_out(open_dataset(data, "train", scribbles=scribbles, scribble_length=scribble_length,
                                     seed=seed), split)
    if scribbles == "masks":
        return MaskSupervision(open_dataset(data, split, scribble_length=scribble_length, seed=seed))
    if isinstance(data, str) and data == "synthetic":
        if scribbles not in ("auto", "generate"):
            raise ValueError(f"scribbles: the synthetic dataset has only generated scribbles "
                             f"('auto' or 'generate'), got {describe(scribbles)}")
        return SyntheticDataset(split, seed=seed, scribble_length=scribble_length)
    if not isinstance(data, (str, Path)):
        raise TypeError(f"data: expected 'synthetic' or a dataset directory, got {describe(data)}")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data: no dataset directory {str(path)!r} ('synthetic' is the "
                                f"built-in generated dataset)")
    if not path.is_dir():
        raise NotADirectoryError(f"data: expected a dataset directory or 'synthetic', got the "
                                 f"file {str(path)!r}")
    kind = VOCDataset if (path / "JPEGImages").is_dir() else FolderDataset
    return kind(path, split, scribbles=scribbles, scribble_length=scribble_length, seed=seed)
