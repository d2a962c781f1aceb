"""Data for training and examples: datasets (folders in the layout of ``../shared/data``, PASCAL VOC
with ScribbleSup scribbles, a generated synthetic set), augmentation, the scribble generator, image
and label-map I/O, and the built-in example scene.

Layer: imports only NumPy, SciPy, Pillow and :mod:`admsolve._validation`; never torch, the energies,
the backends or the training side.
"""

from .augment import augment
from .datasets import (DERIVED_SPLITS, VOC_CLASSES, FolderDataset, MaskSupervision, Sample, Subset, SyntheticDataset,
                       VOCDataset, held_out, open_dataset)
from .examples import synthetic_scene
from .io import read_image, read_label_map, write_label_map
from .scribbles import generate_scribbles

__all__ = [
    "DERIVED_SPLITS",
    "MaskSupervision",
    "Subset",
    "held_out",
    "VOC_CLASSES",
    "FolderDataset",
    "Sample",
    "SyntheticDataset",
    "VOCDataset",
    "augment",
    "generate_scribbles",
    "open_dataset",
    "read_image",
    "read_label_map",
    "synthetic_scene",
    "write_label_map",
]
