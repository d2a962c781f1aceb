"""Segmentation scores and training plots (NumPy; matplotlib only inside the plotting functions).

* :func:`confusion_matrix`, :class:`SegmentationScores` -- mIoU, pixel accuracy and trimap accuracy
  (accuracy within a band around the ground-truth boundaries), as in Table 1/3 of Marin et al.,
  CVPR 2019, accumulated over images of different sizes.
* :func:`boundary_band` -- the trimap band around the ground-truth boundaries.
* :func:`plot_curves`, :func:`plot_comparison` -- loss and mIoU curves against the iteration (Fig. 3).
* :func:`prediction_sheet` -- image / scribbles / prediction / ground truth rows (Fig. 5).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image
from scipy import ndimage

from .._files import atomic_file
from ..data import io
from .._validation import UNLABELED, as_scalar, describe

__all__ = [
    "UNLABELED",
    "SegmentationScores",
    "boundary_band",
    "confusion_matrix",
    "plot_comparison",
    "plot_curves",
    "prediction_sheet",
]



# --------------------------------------------------------------------------- input checks


def _check_unlabeled(unlabeled):
    return as_scalar(unlabeled, "unlabeled", integer=True)


def _int_map(value, name, shape=None) -> np.ndarray:
    """`value` as a 2-D integer array (not copied; never written to)."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a 2-D integer array, got {describe(value)}")
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected a 2-D integer array, got {describe(array)}")
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (H, W) array, got {describe(array)}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} to match truth, got {describe(array)}")
    return array


def _check_pair(pred, truth, n_labels, unlabeled):
    truth = _int_map(truth, "truth")
    pred = _int_map(pred, "pred", truth.shape)
    bad = (pred < 0) | (pred >= n_labels)
    if bad.any():
        raise ValueError(f"pred: expected values in [0, {n_labels}), got {np.unique(pred[bad])[:5].tolist()}")
    bad = ((truth < 0) | (truth >= n_labels)) & (truth != unlabeled)
    if bad.any():
        raise ValueError(f"truth: expected values in [0, {n_labels}) or {unlabeled} (unlabeled), "
                         f"got {np.unique(truth[bad])[:5].tolist()}")
    return pred, truth


# --------------------------------------------------------------------------- scores


def confusion_matrix(pred: ArrayLike, truth: ArrayLike, n_labels: int, *, unlabeled: int = UNLABELED) -> np.ndarray:
    """Confusion matrix of one labeling against the ground truth.

    Parameters
    ----------
    pred : (H, W) array of int
        Predicted labels in [0, K).
    truth : (H, W) array of int
        Ground-truth labels in [0, K), or `unlabeled` for pixels that are not scored.
    n_labels : int
        Number of labels K.
    unlabeled : int, optional
        Ground-truth value of unscored pixels.

    Returns
    -------
    (K, K) ndarray of int64
        Entry ``[t, p]`` counts the non-void pixels with truth t predicted as p (rows = truth).
    """
    n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
    unlabeled = _check_unlabeled(unlabeled)
    pred, truth = _check_pair(pred, truth, n_labels, unlabeled)
    return _confusion(pred, truth, n_labels, unlabeled)


def _confusion(pred, truth, n_labels, unlabeled):
    scored = truth != unlabeled
    index = truth[scored].astype(np.int64) * n_labels + pred[scored].astype(np.int64)
    return np.bincount(index, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def _boundary_distance(truth):
    """Euclidean distance of each pixel to the nearest boundary pixel (None if there is none)."""
    boundary = np.zeros(truth.shape, dtype=bool)
    vertical = truth[1:, :] != truth[:-1, :]
    horizontal = truth[:, 1:] != truth[:, :-1]
    boundary[1:, :] |= vertical
    boundary[:-1, :] |= vertical
    boundary[:, 1:] |= horizontal
    boundary[:, :-1] |= horizontal
    if not boundary.any():
        return None
    return ndimage.distance_transform_edt(~boundary)


def boundary_band(truth: ArrayLike, width: float, *, unlabeled: int = UNLABELED) -> np.ndarray:
    """Pixels within Euclidean distance `width` of a ground-truth boundary (the trimap band).

    A boundary pixel is one with a 4-neighbour of a different value; `unlabeled` counts as a value of
    its own (in GrabCut the void region is the thin band along the object boundary, so the pixels
    next to it are boundary pixels). Boundary pixels are in the band for any ``width >= 0``.

    Parameters
    ----------
    truth : (H, W) array of int
        Ground-truth labels (any integer values, `unlabeled` included).
    width : float
        Band half-width in pixels, >= 0.
    unlabeled : int, optional
        The void value (accepted for symmetry with the other functions: it is simply a value here).

    Returns
    -------
    (H, W) ndarray of bool
        True inside the band; all False when `truth` holds a single value.
    """
    truth = _int_map(truth, "truth")
    width = as_scalar(width, "width", minimum=0)
    _check_unlabeled(unlabeled)
    distance = _boundary_distance(truth)
    if distance is None:
        return np.zeros(truth.shape, dtype=bool)
    return distance <= width


def _width_key(width):
    return f"trimap_{width:g}"


class SegmentationScores:
    """Accumulates segmentation scores over images (of different sizes).

    Parameters
    ----------
    n_labels : int
        Number of labels K.
    unlabeled : int, optional
        Ground-truth value of unscored pixels.
    trimap_widths : sequence of float, optional
        Band widths (pixels) of the trimap accuracies (key ``f"trimap_{w:g}"``, e.g. ``"trimap_8"``).

    Examples
    --------
    >>> scores = SegmentationScores(2)
    >>> scores.update(np.array([[0, 1]]), np.array([[0, 1]]))
    >>> scores.result()["miou"]
    1.0
    """

    def __init__(self, n_labels: int, *, unlabeled: int = UNLABELED, trimap_widths: Iterable[float] = (8, 16)) -> None:
        self.n_labels = as_scalar(n_labels, "n_labels", minimum=1, integer=True)
        self.unlabeled = _check_unlabeled(unlabeled)
        if isinstance(trimap_widths, (str, bytes)) or not hasattr(trimap_widths, "__iter__"):
            raise TypeError(f"trimap_widths: expected a sequence of widths, got {describe(trimap_widths)}")
        widths = tuple(as_scalar(w, "trimap_widths", minimum=0) for w in trimap_widths)
        self.trimap_widths = tuple(int(w) if float(w).is_integer() else w for w in widths)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._confusion = np.zeros((self.n_labels, self.n_labels), dtype=np.int64)
        self._band_correct = np.zeros(len(self.trimap_widths), dtype=np.int64)
        self._band_total = np.zeros(len(self.trimap_widths), dtype=np.int64)
        self.images = 0

    def combine(self, total: Callable[[np.ndarray], ArrayLike]) -> None:
        """Replace the counts by ``total(counts)``, e.g. their sum over the processes of a
        distributed evaluation, each of which scored its share of the images."""
        counts = total(np.concatenate([self._confusion.ravel(), self._band_correct, self._band_total, [self.images]]))
        counts = np.rint(counts).astype(np.int64)
        k, w = self.n_labels * self.n_labels, len(self.trimap_widths)
        self._confusion = counts[:k].reshape(self.n_labels, self.n_labels)
        self._band_correct, self._band_total = counts[k:k + w], counts[k + w:k + 2 * w]
        self.images = int(counts[-1])

    @property
    def confusion(self) -> np.ndarray:
        """(K, K) int64 confusion matrix accumulated so far (a copy; rows = truth)."""
        return self._confusion.copy()

    def update(self, pred: ArrayLike, truth: ArrayLike) -> None:
        """Add one image.

        Parameters
        ----------
        pred : (H, W) array of int
            Predicted labels in [0, K).
        truth : (H, W) array of int
            Ground truth in [0, K) or `unlabeled`.
        """
        pred, truth = _check_pair(pred, truth, self.n_labels, self.unlabeled)
        self._confusion += _confusion(pred, truth, self.n_labels, self.unlabeled)
        if self.trimap_widths:
            distance = _boundary_distance(truth)
            if distance is not None:
                scored = truth != self.unlabeled
                correct = scored & (pred == truth)
                for i, width in enumerate(self.trimap_widths):
                    band = distance <= width
                    self._band_total[i] += np.count_nonzero(band & scored)
                    self._band_correct[i] += np.count_nonzero(band & correct)
        self.images += 1

    def result(self) -> dict[str, Any]:
        """The scores over every image added so far.

        Returns
        -------
        dict
            ``"miou"``: mean over the classes present in truth or prediction (union > 0) of
            TP / (TP + FP + FN); ``"accuracy"``: correct / non-void pixels; ``f"trimap_{w}"``:
            accuracy over the non-void pixels within `w` of a boundary; ``"iou"``: list of the
            per-class IoU (NaN for absent classes); ``"pixels"``: number of non-void pixels.
            Scores with no pixel to average over are NaN.
        """
        confusion = self._confusion
        tp = np.diag(confusion).astype(np.float64)
        union = confusion.sum(axis=0) + confusion.sum(axis=1) - np.diag(confusion)
        present = union > 0
        iou = np.full(self.n_labels, np.nan)
        iou[present] = tp[present] / union[present]
        pixels = int(confusion.sum())
        scores = {
            "miou": float(iou[present].mean()) if present.any() else math.nan,
            "accuracy": float(tp.sum() / pixels) if pixels else math.nan,
        }
        for width, correct, total in zip(self.trimap_widths, self._band_correct, self._band_total):
            scores[_width_key(width)] = float(correct / total) if total else math.nan
        scores["iou"] = [float(v) for v in iou]
        scores["pixels"] = pixels
        return scores


# --------------------------------------------------------------------------- plots


def _check_records(records, name):
    if isinstance(records, (str, bytes, dict)) or not hasattr(records, "__iter__"):
        raise TypeError(f"{name}: expected a list of dicts (metrics records), got {describe(records)}")
    records = list(records)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"{name}: expected a list of dicts, got {describe(record)} at index {i}")
    return records


def _number(value):
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records, key):
    """Sorted (iterations, values) of the records holding a finite number under `key` and "iteration"."""
    points = []
    for record in records:
        x, y = _number(record.get("iteration")), _number(record.get(key))
        if x is not None and y is not None:
            points.append((x, y))
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


def _is_loss_key(key):
    return key.startswith("loss") or key.endswith("_loss") or "crf_loss" in key or "crf_energy" in key


def _keys(records, accept):
    keys = []
    for record in records:
        for key in record:
            if isinstance(key, str) and key not in keys and accept(key):
                keys.append(key)
    return keys


def _figure(n_panels, title):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * n_panels, 4), dpi=100)
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    if title:
        figure.suptitle(str(title))
    return figure, axes


def _finish_panel(axes, ylabel, logy=False):
    axes.set_xlabel("iteration")
    axes.set_ylabel(ylabel)
    if axes.lines:
        axes.legend(fontsize="small")
        axes.grid(True, alpha=0.3)
        if logy:
            values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in axes.lines])
            if values.min() > 0 and values.max() / values.min() > 100:
                axes.set_yscale("log")
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)


def save_figure(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Lay out a matplotlib figure and write it as the PNG `path`, replaced as a whole
    (:func:`admsolve._files.atomic_file`: a failed write names the file and leaves it as it was)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_file(path) as stream:
        figure.savefig(stream, format="png")
    return path


def plot_curves(records: Iterable[dict[str, Any]], path: str | os.PathLike[str], *,
                title: str | None = None) -> Path:
    """Training curves (Fig. 3 of the paper) as a PNG with two panels against ``"iteration"``.

    Left: every loss key -- one that starts with ``"loss"``, ends with ``"_loss"`` or contains
    ``"crf_loss"`` or ``"crf_energy"`` (e.g. ``train_loss``, ``grid_crf_loss_train``,
    ``grid_crf_energy_val``); the y axis
    is logarithmic when the values are positive and span more than a factor 100. Right: ``"miou"``,
    ``"accuracy"`` and any ``"trimap_*"`` accuracy. Records missing a key (or ``"iteration"``), or
    holding a non-finite or non-numeric value, contribute no point to that line.

    Parameters
    ----------
    records : list of dict
        Lines of ``metrics.jsonl``.
    path : str or os.PathLike
        The PNG to write (its folder must exist).
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    records = _check_records(records, "records")
    figure, (left, right) = _figure(2, title)
    for key in _keys(records, _is_loss_key):
        x, y = _series(records, key)
        if x:
            left.plot(x, y, marker="." if len(x) < 30 else None, label=key)
    _finish_panel(left, "loss", logy=True)
    score_keys = ["miou", "accuracy"] + sorted(_keys(records, lambda k: k.startswith("trimap_")))
    for key in score_keys:
        x, y = _series(records, key)
        if x:
            right.plot(x, y, marker="." if len(x) < 30 else None, label=key)
    _finish_panel(right, "score")
    return save_figure(figure, path)


def plot_comparison(runs: dict[str, Iterable[dict[str, Any]]], path: str | os.PathLike[str], *,
                    keys: Sequence[str] = ("grid_crf_loss_train", "grid_crf_energy_train", "miou")) -> Path:
    """Compare runs (``admsolve compare``): one panel per record key, one line per run.

    Parameters
    ----------
    runs : dict of str to list of dict
        Run name -> its records (lines of ``metrics.jsonl``), plotted against ``"iteration"``.
    path : str or os.PathLike
        The PNG to write.
    keys : sequence of str, optional
        The record key of each panel (losses on a log scale, scores not).

    Returns
    -------
    pathlib.Path
        `path`.
    """
    if not isinstance(runs, dict):
        raise TypeError(f"runs: expected a dict of run name -> list of records, got {describe(runs)}")
    if isinstance(keys, str) or not keys or not all(isinstance(key, str) for key in keys):
        raise TypeError(f"keys: expected a non-empty sequence of record keys (str), got {describe(keys)}")
    runs = {str(name): _check_records(records, f"runs[{name!r}]") for name, records in runs.items()}
    figure, axes = _figure(len(keys), None)
    for panel, panel_key in zip(axes, keys):
        for name, records in runs.items():
            x, y = _series(records, panel_key)
            if x:
                panel.plot(x, y, marker="." if len(x) < 30 else None, label=name)
        panel.set_title(panel_key)
        _finish_panel(panel, panel_key, logy=_is_loss_key(panel_key))
    return save_figure(figure, path)


# --------------------------------------------------------------------------- prediction sheet

#: Colour of void ground-truth pixels in the prediction sheet.
VOID_COLOUR = np.array((255, 255, 255), dtype=np.uint8)
SHEET_TILE_HEIGHT = 160


def _rgb(image, name):
    """`image` as a new (H, W, 3) uint8 array (uint8, or float in [0, 1] or [0, 255]; grey allowed)."""
    if image is None or isinstance(image, (str, bytes)):
        raise TypeError(f"{name}: expected an (H, W, 3) image array, got {describe(image)}")
    array = np.asarray(image)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) \
            or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected a uint8 or float image array, got {describe(array)}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.size == 0:
        raise ValueError(f"{name}: expected an (H, W, 3) or (H, W) image array, got {describe(array)}")
    if array.dtype == np.uint8:
        return array.copy()
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite values")
    if np.issubdtype(np.asarray(image).dtype, np.floating) and array.max() <= 1.0:
        array = array * 255.0
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _resize(tile, size, nearest):
    if tile.shape[1::-1] == size:
        return tile
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(tile).resize(size, resample))


def _labels_picture(labels, unlabeled):
    picture = io.colorize(np.where(labels == unlabeled, 0, labels))
    picture[labels == unlabeled] = VOID_COLOUR
    return picture


def prediction_sheet(path: str | os.PathLike[str], images: Sequence[ArrayLike], scribbles: Sequence[ArrayLike | None],
                     predictions: Sequence[ArrayLike], truths: Sequence[ArrayLike | None], *,
                     ids: Sequence[str] | None = None, columns: int = 4, unlabeled: int = UNLABELED) -> Path:
    """Qualitative results (Fig. 5): per image, the image, its scribbles, the prediction, the truth.

    Each image gives four tiles -- the image; the image with the scribbled pixels drawn in their
    label colours (:func:`admsolve.data.io.overlay` with ``alpha=0``); the prediction and the ground
    truth in :data:`admsolve.data.io.PALETTE` colours (void white). Every tile is resized (nearest
    neighbour for labels) to 160 px high with the aspect ratio of the first image. Captions are
    ``"<id> image"``, ``"<id> scribbles"``, ``"<id> prediction"``, ``"<id> truth"``. Written with
    :func:`admsolve.data.io.save_sheet`; nothing passed in is modified.

    Parameters
    ----------
    path : str or os.PathLike
        The PNG to write.
    images : sequence of (H, W, 3) arrays
        uint8 RGB, or float in [0, 1] (scaled by 255) or [0, 255]; sizes may differ between images.
    scribbles : sequence of (H, W) int arrays
        Scribble labels, `unlabeled` where unscribbled (None: no scribbles drawn).
    predictions : sequence of (H, W) int arrays
        Predicted labels.
    truths : sequence of (H, W) int arrays or None
        Ground truth with `unlabeled` (void); None gives a blank tile.
    ids : sequence of str, optional
        Names in the captions (default ``"0"``, ``"1"``, ...).
    columns : int, optional
        Tiles per sheet row; the default 4 puts one image per row.
    unlabeled : int, optional
        Value of unscribbled pixels in `scribbles` and of void pixels in `truths`.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    sequences = {"images": images, "scribbles": scribbles, "predictions": predictions, "truths": truths}
    for name, value in sequences.items():
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
            raise TypeError(f"{name}: expected a sequence with one entry per image, got {describe(value)}")
    n = len(images)
    if n == 0:
        raise ValueError("images: expected at least one image, got none")
    for name, value in sequences.items():
        if len(value) != n:
            raise ValueError(f"{name}: expected {n} entries (one per image), got {len(value)}")
    if ids is None:
        ids = [str(i) for i in range(n)]
    elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__") or len(ids) != n:
        raise ValueError(f"ids: expected {n} names (one per image), got {describe(ids)}")
    columns = as_scalar(columns, "columns", integer=True, minimum=1)
    unlabeled = _check_unlabeled(unlabeled)

    first = _rgb(images[0], "images[0]")
    height = SHEET_TILE_HEIGHT
    size = (max(1, round(height * first.shape[1] / first.shape[0])), height)  # PIL (width, height)
    tiles, captions = [], []
    for i in range(n):
        image = _rgb(images[i], f"images[{i}]")
        shape = image.shape[:2]
        prediction = _int_map(predictions[i], f"predictions[{i}]", shape)
        if scribbles[i] is None:
            scribbled = image
        else:
            scribble = _int_map(scribbles[i], f"scribbles[{i}]", shape)
            scribbled = io.overlay(image, scribble, scribble, unlabeled=unlabeled, alpha=0.0)
        if truths[i] is None:
            truth = np.full(image.shape, 255, dtype=np.uint8)
        else:
            truth = _labels_picture(_int_map(truths[i], f"truths[{i}]", shape), unlabeled)
        name = str(ids[i])
        for tile, caption, nearest in ((image, "image", False), (scribbled, "scribbles", True),
                                       (_labels_picture(prediction, unlabeled), "prediction", True),
                                       (truth, "truth", True)):
            tiles.append(np.ascontiguousarray(_resize(tile, size, nearest)))
            captions.append(f"{name} {caption}")
    io.save_sheet(path, tiles, captions, columns=columns)
    return Path(path)
