"""Applying a run's trained network to new images, and scoring it on any folder.

:class:`Predictor` loads a run folder's network (``model.json`` and a checkpoint) and returns labels and
probabilities for image arrays, in overlapping tiles where an image is larger than ``tile_size``, and
optionally refined by DeepLab's dense-CRF post-processing (:func:`dense_crf`: the network's softmax as
unaries, solved by ``solve(DenseCRF, "mean-field")``). :func:`evaluate_run` scores a run on its own
validation split or on any folder and split, with or without the CRF.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._support import ProgressBar
from .._validation import as_scalar
from ..data import open_dataset
from .crf import CRF_DEFAULTS, dense_crf
from .checkpoints import (BEST_CHECKPOINT, MODEL_FILE, load_model_state, read_config, read_metrics, read_model_info,
                          write_model_info)
from .distributed import pick_device
from .evaluation import Evaluator, image_tensor
from .loop import NO_VALIDATION, describe_config
from .metrics import plot_curves
from .models import build_model, input_normalization

__all__ = ["Predictor", "evaluate_run", "find_checkpoint"]

#: Longest side of the image an image is run through the network whole; larger ones go in tiles.
TILE_SIZE = 1024
#: Tile sizes are multiples of this, so that every tile starts on a multiple of 32 pixels (the coarsest
#: stride of the networks) and the overlap of a quarter of a tile on each side is one too.
TILE_MULTIPLE = 128


def find_checkpoint(run: str | os.PathLike[str], checkpoint: str | os.PathLike[str] = "best") -> Path:
    """The checkpoint file that `checkpoint` names: "last" is ``RUN/checkpoint.pt``; "best" is
    ``RUN/checkpoint-best.pt`` (best val mIoU), or the last where the run kept none (it was never scored);
    anything else is a path. A FileNotFoundError names what is missing."""
    run = Path(run)
    if checkpoint in ("best", "last"):
        best = run / BEST_CHECKPOINT
        path = best if checkpoint == "best" and best.is_file() else run / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint: no {path.name} in {str(run)!r} (the run has not finished an epoch)")
        return path
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r} (expected best, last or a checkpoint file)")
    return path


def _tile_windows(size, tile):
    """Along one axis of `size` pixels: (window, core) pairs, each a (start, stop) range: the window goes
    through the network, its core (the window without a quarter of a tile on each inner side) is kept.
    The cores cover the axis once; a size up to `tile` is one window."""
    if size <= tile:
        return [((0, size), (0, size))]
    margin, core = tile // 4, tile // 2
    return [((max(0, start - margin), min(size, start + core + margin)), (start, min(size, start + core)))
            for start in range(0, size, core)]


class Predictor:
    """A run's trained network, applied to images: ``labels, probs = predictor(image)``.

    Parameters
    ----------
    run : str or Path
        A run folder of ``admsolve train`` (``config.json``, ``model.json``, a checkpoint).
    checkpoint : str or Path, optional
        "best" (the default: the best val mIoU, else the last), "last" or a checkpoint file (see
        :func:`find_checkpoint`).
    device : str, optional
        "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
    batch_size : int, optional
        Most images (or tiles) of one size that go through the network together.
    tile_size : int, optional
        An image with a side longer than this goes through in overlapping tiles of at most
        ``tile_size`` x ``tile_size`` (a multiple of 128; a quarter of a tile overlaps on each side and
        is dropped), so that the network's memory is bounded by the tile's; the (H, W, K) float32
        probabilities of the whole image are kept.
    crf : bool or dict, optional
        Refine by :func:`dense_crf`: True with :data:`CRF_DEFAULTS`, or a dict of its options (the others
        default).

    Attributes
    ----------
    model : torch.nn.Module
        The network, in eval mode on `device`.
    n_labels : int
    class_names : list of str
    checkpoint : Path
        The checkpoint file loaded.
    crf : dict or None
        The options of :func:`dense_crf`, or None.
    """

    def __init__(self, run: str | os.PathLike[str], *, checkpoint: str | os.PathLike[str] = "best",
                 device: str = "cpu", batch_size: int = 4, tile_size: int = TILE_SIZE,
                 crf: bool | dict[str, float] | None = None) -> None:
        run = Path(run)
        read_config(run)  # a run folder whose settings read
        info = read_model_info(run)
        self.batch_size = as_scalar(batch_size, "batch_size", minimum=1, integer=True)
        self.tile_size = as_scalar(tile_size, "tile_size", minimum=TILE_MULTIPLE, integer=True)
        if self.tile_size % TILE_MULTIPLE:
            raise ValueError(f"tile_size: expected a multiple of {TILE_MULTIPLE}, got {tile_size}")
        if crf is True:
            crf = {}
        if crf:
            unknown = sorted(set(crf) - set(CRF_DEFAULTS))
            if unknown:
                raise TypeError(f"crf: expected options among {', '.join(CRF_DEFAULTS)}, got {', '.join(unknown)}")
        self.crf = None if crf is None or crf is False else {**CRF_DEFAULTS, **crf}
        self.n_labels, self.class_names = info["n_labels"], info["class_names"]
        self.device = pick_device(device)
        self.checkpoint = find_checkpoint(run, checkpoint)
        model = build_model(info["model"], self.n_labels, pretrained=False)
        model.load_state_dict(load_model_state(self.checkpoint, model, "checkpoint"))
        self.model = model.to(self.device).eval()

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels (H, W) uint8 and probabilities (H, W, K) float32 of one (H, W, 3) uint8 image: the
        network's softmax, or with ``crf`` the dense CRF's marginals (the labels their argmax)."""
        return self.predict([image])[0]

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(labels, probs) of each (H, W, 3) uint8 image, as :meth:`__call__` gives; images (or tiles) of
        one size go through the network together, up to ``batch_size`` at a time."""
        images = [self._check(image, f"images[{i}]") for i, image in enumerate(images)]
        probs = [np.empty(image.shape[:2] + (self.n_labels,), np.float32) for image in images]
        jobs = [(index, (ys, xs), (cy, cx)) for index, image in enumerate(images)
                for ys, cy in _tile_windows(image.shape[0], self.tile_size)
                for xs, cx in _tile_windows(image.shape[1], self.tile_size)]

        def window_shape(job):
            (ys, xs) = job[1]
            return ys[1] - ys[0], xs[1] - xs[0]

        for _, group in itertools.groupby(sorted(jobs, key=window_shape), key=window_shape):
            group = list(group)
            for first in range(0, len(group), self.batch_size):
                batch = group[first:first + self.batch_size]
                windows = np.stack([images[index][slice(*ys), slice(*xs)] for index, (ys, xs), _ in batch])
                with torch.no_grad():
                    soft = self.model(image_tensor(windows, self.device)).softmax(1).float()
                for (index, (ys, xs), (cy, cx)), window_probs in zip(batch, soft.permute(0, 2, 3, 1).cpu().numpy()):
                    probs[index][slice(*cy), slice(*cx)] = \
                        window_probs[cy[0] - ys[0]:cy[1] - ys[0], cx[0] - xs[0]:cx[1] - xs[0]]
        return [self._labels(image, image_probs) for image, image_probs in zip(images, probs)]

    def _labels(self, image, probs):
        if self.crf is None:
            return probs.argmax(2).astype(np.uint8), probs
        result = dense_crf(image, probs, **self.crf)
        return result.labels.astype(np.uint8), result.probs.astype(np.float32)

    @staticmethod
    def _check(image, name):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"{name}: expected an (H, W, 3) uint8 RGB image, got array of shape {image.shape} "
                             f"and dtype {image.dtype}")
        return image


def evaluate_run(run: str | os.PathLike[str], *, data: str | os.PathLike[str] | None = None,
                 split: str | None = None, checkpoint: str | os.PathLike[str] = "last",
                 crf: bool | dict[str, float] | None = None, device: str = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Score a run's network: validation scores and grid-CRF losses (a dict).

    Parameters
    ----------
    run : str or Path
    data : str or Path, optional
        A dataset folder (or "synthetic") to score on instead of the run's; its split `split` (default
        "val") needs masks and at most the run's number of labels.
    split : str, optional
        The split scored (default: the run's validation split, or "val" with `data`).
    checkpoint : str or Path, optional
        "last" (the default), "best" or a file (see :func:`find_checkpoint`).
    crf : bool or dict, optional
        Score the labels after :func:`dense_crf` (True: :data:`CRF_DEFAULTS`; a dict: some of its options).
    device : str, optional
    progress : bool, optional
        A progress bar on stderr (on a terminal).

    Returns
    -------
    dict
        ``miou``, ``accuracy``, ``trimap_8``, ``trimap_16``, ``grid_crf_loss_val``, ``grid_crf_energy_val``
        (of the network's softmax, also with `crf`), and on the run's own split the ``_train`` losses.
        On the run's own split without `crf`, ``predictions.png`` and ``curves.png`` are redrawn; a run
        without ``model.json`` (trained before runs recorded it) gets one.
    """
    run = Path(run)
    config = read_config(run)
    own = data is None and split in (None, config.val_split)
    split = (config.val_split if data is None else "val") if split is None else split
    if split == NO_VALIDATION:
        raise ValueError("split: the run has no validation split (trained with --val-split none); name one "
                         "with --split")
    data = config.data if data is None else str(data)
    scribbles = config.scribbles if own else "auto"
    val_set = open_dataset(data, split, scribbles=scribbles, scribble_length=config.scribble_length, seed=config.seed)
    if len(val_set.unmasked) == len(val_set):
        raise ValueError(f"split: the {split!r} images of {str(data)!r} have no masks: nothing to score")
    train_set = open_dataset(config.data, config.train_split, scribbles=config.scribbles,
                             scribble_length=config.scribble_length, seed=config.seed) if own else None
    if not (run / MODEL_FILE).is_file():
        described = train_set or open_dataset(config.data, config.train_split, scribbles=config.scribbles,
                                              scribble_length=config.scribble_length, seed=config.seed)
        write_model_info(run, n_labels=described.n_labels, class_names=described.class_names, model=config.model,
                         normalization=input_normalization(build_model(config.model, described.n_labels,
                                                                       pretrained=False)))
    predictor = Predictor(run, checkpoint=checkpoint, device=device, crf=crf)
    if val_set.n_labels > predictor.n_labels:
        raise ValueError(f"data: split {split!r} of {str(data)!r} has {val_set.n_labels} labels, the run's network "
                         f"{predictor.n_labels}")

    def postprocess(image, probs):
        return dense_crf(image, probs, **predictor.crf).labels

    evaluator = Evaluator(train_set, val_set, n_labels=predictor.n_labels, connectivity=config.connectivity,
                          seed=config.seed, device=predictor.device,
                          postprocess=None if predictor.crf is None else postprocess)
    bar = ProgressBar(len(val_set) + len(evaluator.train_images), "evaluating", enabled=progress)
    redraw = own and predictor.crf is None
    try:
        result = evaluator(predictor.model, sheet=run / "predictions.png" if redraw else None, progress=bar.update)
    finally:
        bar.close()
    records = read_metrics(run)
    if redraw and records:
        plot_curves(records, run / "curves.png", title=describe_config(config))
    return result
