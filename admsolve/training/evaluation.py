"""Evaluation of a network during and after training: validation scores (mIoU, accuracy, trimap
accuracies) and the grid-CRF loss of its outputs on training and validation images (Table 1),
relaxed and discrete, and the prediction sheet (Fig. 5)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .distributed import Processes
from ..energies.gridcrf import edge_slices
from .losses import _contrast_weights, _GridCRFFunction, argmax_labels
from .metrics import SegmentationScores, prediction_sheet

if TYPE_CHECKING:
    from ..data.datasets import DatasetLike, Sample

#: Images of the training set on which grid_crf_loss_train is measured (the paper used 1,000).
TRAIN_EVAL_IMAGES = 100
#: Validation images drawn in predictions.png.
SHEET_IMAGES = 6
#: Most images of one size that go through the network together during evaluation.
EVAL_BATCH = 8


def _same_size_batches(dataset, indices):
    """The samples of `indices`, in order, cut into runs of up to EVAL_BATCH images of one size."""
    batch = []
    for index in indices:
        sample = dataset[index]
        if batch and (len(batch) == EVAL_BATCH or batch[0].image.shape != sample.image.shape):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


def image_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on `device`."""
    return torch.tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def grid_crf_per_pixel(probs: torch.Tensor, images: torch.Tensor, *, connectivity: int) -> torch.Tensor:
    """The grid-CRF term (lam = 1) of each image's output divided by its pixel count, relaxed and discrete.

    Returns an (N, 2) float64 tensor of ``(relaxed, discrete)`` per image: eq. 9 (halved) at the
    softmax S (:func:`~admsolve.training.grid_crf_loss`), the term of loss (4) that GD minimises, and
    the Potts energy of the segmentation argmax S (:meth:`admsolve.GridCRF.cut_weight`), the discrete
    R(X) that ADM's latent step minimises. `probs` is (N, K, H, W), `images` (N, 3, H, W) in [0, 1],
    on one device; the contrast weights, computed once for both, are those of the 0..255 images.
    """
    soft = probs.double()
    labels = argmax_labels(soft)
    height, width = labels.shape[1:]
    weights = _contrast_weights(images.double() * 255.0, connectivity)
    potts = soft.new_zeros(len(soft))
    for d, w in enumerate(weights):
        (rp, cp), (rq, cq) = edge_slices(d, height, width)
        potts += (w * (labels[:, rp, cp] != labels[:, rq, cq])).sum(dim=(1, 2))
    return torch.stack([_GridCRFFunction.apply(soft, *weights), potts], dim=1) / (height * width)


class Evaluator:
    """Scores a network on a run's validation set and measures its grid-CRF loss on train and val.

    Parameters
    ----------
    train_set : dataset of :mod:`admsolve.data`, or None
        Where the grid-CRF loss on training images is measured (None: not measured).
    val_set : dataset of :mod:`admsolve.data`
        Scored where every image has a mask; where none has, only the losses are measured (``scored``
        is False); a split where some images have masks and others not is refused.
    n_labels : int
    connectivity : int
        Of the grid CRF whose loss is measured.
    seed : int
        Picks the training images measured.
    device : torch.device
    postprocess : callable, optional
        ``postprocess(image, probs)`` -> labels: the (H, W) labels scored, from the (H, W, 3) uint8
        image and the network's (H, W, K) float32 softmax (e.g. a dense CRF); by default argmax.
    """

    def __init__(self, train_set: DatasetLike | None, val_set: DatasetLike, *, n_labels: int, connectivity: int,
                 seed: int, device: torch.device, processes: Processes | None = None,
                 postprocess: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        self.train_set, self.val_set = train_set, val_set
        self.n_labels, self.connectivity, self.device = n_labels, connectivity, device
        self.postprocess = postprocess
        self.scored = not val_set.unmasked
        if val_set.unmasked and len(val_set.unmasked) < len(val_set):
            raise ValueError(f"val: {len(val_set.unmasked)} of the {len(val_set)} images of split {val_set.split!r} "
                             f"have no mask (first: {val_set.unmasked[0]!r}); scores need every image's mask, "
                             f"losses alone none")
        self.processes = Processes() if processes is None else processes
        share = slice(self.processes.rank, None, self.processes.world_size)  # this process's images
        picked = [] if train_set is None else \
            np.random.default_rng(seed).permutation(len(train_set))[:TRAIN_EVAL_IMAGES]
        self.train_images = sorted(picked)[share]
        self.val_images = list(range(len(val_set)))[share]

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, dataset: DatasetLike, indices: Iterable[int], *,
                progress: Callable[[int, int], object] | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[Sample]]]:
        """(images (B, 3, H, W), probs (B, K, H, W), samples) for each batch of up to
        :data:`EVAL_BATCH` images of one size, full size, on the evaluation device, the network in
        eval mode. `progress(done, total)` is called after each batch."""
        model.eval()
        indices = list(indices)
        done = 0
        for batch in _same_size_batches(dataset, indices):
            images = image_tensor(np.stack([sample.image for sample in batch]), self.device)
            yield images, model(images).softmax(1).float(), batch
            done += len(batch)
            if progress is not None:
                progress(done, len(indices))

    def __call__(self, model: torch.nn.Module, *, sheet: str | os.PathLike[str] | None = None,
                 progress: Callable[[int, int], object] | None = None) -> dict:
        """Scores on the validation set (where it has masks) and grid-CRF losses on train (where
        measured) and val (one dict); draws the prediction sheet in the file `sheet` when given.
        `progress(done, total)` follows the images."""
        total = len(self.val_images) + len(self.train_images)

        def val_progress(done, _):
            if progress is not None:
                progress(done, total)

        def train_progress(done, _):
            if progress is not None:
                progress(len(self.val_images) + done, total)

        scores = SegmentationScores(self.n_labels)
        val_losses: list[torch.Tensor] = []
        train_losses: list[torch.Tensor] = []
        tiles: list[tuple[Sample, np.ndarray]] = []
        for images, probs, samples in self.predict(model, self.val_set, self.val_images, progress=val_progress):
            if self.postprocess is None:
                predictions = argmax_labels(probs).cpu().numpy()
            else:
                predictions = [self.postprocess(sample.image, image_probs)
                               for sample, image_probs in zip(samples, probs.permute(0, 2, 3, 1).cpu().numpy())]
            for sample, prediction in zip(samples, predictions):
                if self.scored:
                    scores.update(prediction, sample.mask)
                if sheet is not None and len(tiles) < SHEET_IMAGES:
                    tiles.append((sample, prediction))
            val_losses.append(grid_crf_per_pixel(probs, images, connectivity=self.connectivity).cpu())
        for images, probs, _ in self.predict(model, self.train_set, self.train_images, progress=train_progress):
            train_losses.append(grid_crf_per_pixel(probs, images, connectivity=self.connectivity).cpu())
        scores.combine(self.processes.sum)
        result = {key: value for key, value in scores.result().items() if key not in ("iou", "pixels")} \
            if self.scored else {}
        for split, batches in (("train", train_losses), ("val", val_losses)):
            if split == "train" and self.train_set is None:
                continue
            losses = torch.cat(batches).numpy() if batches else np.zeros((0, 2))
            sums = self.processes.sum(np.concatenate([losses.sum(axis=0), [len(losses)]]))
            result[f"grid_crf_loss_{split}"], result[f"grid_crf_energy_{split}"] = (sums[:2] / sums[2]).tolist()
        if sheet is not None and tiles and self.processes.main:  # under torchrun rank 0 alone writes files
            prediction_sheet(sheet, [s.image for s, _ in tiles], [s.scribbles for s, _ in tiles],
                             [p for _, p in tiles], [s.mask for s, _ in tiles], ids=[s.id for s, _ in tiles])
        return result
