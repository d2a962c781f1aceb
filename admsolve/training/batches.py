"""The training batches of a run: the order of each epoch and the augmented crops, every random draw
seeded by (seed, epoch, image), so that a resumed run sees exactly the batches it would have seen,
with any number of loader workers and, under torch.distributed, any number of processes (each takes
its share of every global batch)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import augment

if TYPE_CHECKING:
    from ..data.datasets import DatasetLike


class _Crops(Dataset):
    """The augmented crop of each training image in one epoch (torch-free samples, NumPy arrays)."""

    def __init__(self, dataset, epoch, *, crop_size, scale, seed):
        self.dataset, self.epoch, self.crop_size, self.scale, self.seed = dataset, epoch, crop_size, scale, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = augment(self.dataset[index], np.random.default_rng([self.seed, self.epoch, index]),
                         crop_size=self.crop_size, scale=self.scale)
        return sample.image, sample.scribbles, sample.valid


def _collate(samples):
    """(N, H, W, 3) uint8 images as NumPy (the latent step and the contrast weights read them),
    (N, H, W) int64 scribbles and (N, H, W) bool valid pixels (False on crop padding) as tensors."""
    images = np.stack([image for image, _, _ in samples])
    scribbles = torch.from_numpy(np.stack([s for _, s, _ in samples]).astype(np.int64))
    valid = torch.from_numpy(np.stack([v for _, _, v in samples]))
    return images, scribbles, valid


class TrainingBatches:
    """Batches of augmented crops of a training set.

    Parameters
    ----------
    dataset : a dataset of :mod:`admsolve.data`
    batch_size : int
        The global batch: under torch.distributed each of the `world_size` processes takes
        ``batch_size / world_size`` images of it.
    crop_size : (int, int)
    scale : (float, float)
        Range of the random scaling.
    seed : int
    device : torch.device
        Where the scribble tensors go.
    workers : int, optional
        DataLoader worker processes (0: in this process). The batches are the same for any number.
    rank, world_size : int, optional
        This process's share of every batch.
    """

    def __init__(self, dataset: DatasetLike, *, batch_size: int, crop_size: tuple[int, int], scale: tuple[float, float],
                 seed: int, device: torch.device, workers: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size: expected a multiple of the world size {world_size} (each process takes "
                             f"an equal share of a batch), got {batch_size}")
        self.dataset = dataset
        self.batch_size, self.crop_size, self.scale = batch_size, crop_size, scale
        self.seed, self.device, self.workers = seed, device, workers
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = math.ceil(len(dataset) / batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the training images in `epoch`."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def shares(self, epoch: int) -> list[list[int]]:
        """This process's indices of each global batch of `epoch`."""
        order = self.order(epoch)
        return [order[step * self.batch_size:(step + 1) * self.batch_size][self.rank::self.world_size].tolist()
                for step in range(self.steps_per_epoch)]

    def batch(self, epoch: int, indices: Sequence[int]) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Augmented crops of the training images `indices`: (N, H, W, 3) uint8 images, (N, H, W) int64
        scribbles and (N, H, W) bool valid pixels (False on crop padding), the tensors on the device."""
        crops = _Crops(self.dataset, epoch, crop_size=self.crop_size, scale=self.scale, seed=self.seed)
        images, scribbles, valid = _collate([crops[i] for i in indices])
        return images, scribbles.to(self.device), valid.to(self.device)

    def epoch(self, epoch: int) -> Iterator[tuple[int, np.ndarray, torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, in order: ``(step, images, scribbles, valid)`` as :meth:`batch`."""
        crops = _Crops(self.dataset, epoch, crop_size=self.crop_size, scale=self.scale, seed=self.seed)
        loader = DataLoader(crops, batch_sampler=self.shares(epoch), num_workers=self.workers, collate_fn=_collate,
                            pin_memory=self.device.type == "cuda")
        for step, (images, scribbles, valid) in enumerate(loader):
            yield step, images, scribbles.to(self.device, non_blocking=True), valid.to(self.device, non_blocking=True)
