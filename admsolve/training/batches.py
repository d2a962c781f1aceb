"""The training batches of a run: the order of each epoch and the augmented crops, every random draw
seeded by (seed, epoch, image), so that a resumed run sees exactly the batches it would have seen."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data import augment


class TrainingBatches:
    """Batches of augmented crops of a training set.

    Parameters
    ----------
    dataset : a dataset of :mod:`admsolve.data`
    batch_size : int
    crop_size : (int, int)
    scale : (float, float)
        Range of the random scaling.
    seed : int
    device : torch.device
        Where the scribble tensors go.
    """

    def __init__(self, dataset, *, batch_size: int, crop_size: tuple[int, int], scale: tuple[float, float],
                 seed: int, device: torch.device):
        self.dataset = dataset
        self.batch_size, self.crop_size, self.scale = batch_size, crop_size, scale
        self.seed, self.device = seed, device
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the training images in `epoch`."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def batch(self, epoch: int, indices) -> tuple[np.ndarray, torch.Tensor]:
        """Augmented crops of the training images `indices`: (N, H, W, 3) uint8 images and
        (N, H, W) int64 scribbles on the device."""
        samples = [augment(self.dataset[i], np.random.default_rng([self.seed, epoch, i]),
                           crop_size=self.crop_size, scale=self.scale) for i in indices]
        images = np.stack([s.image for s in samples])
        scribbles = torch.from_numpy(np.stack([s.scribbles for s in samples]).astype(np.int64)).to(self.device)
        return images, scribbles

    def epoch(self, epoch: int):
        """The batches of `epoch`, in order: ``(step, images, scribbles)``."""
        order = self.order(epoch)
        for step in range(self.steps_per_epoch):
            yield step, *self.batch(epoch, order[step * self.batch_size:(step + 1) * self.batch_size])
