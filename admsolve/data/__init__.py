"""Data for training and examples: datasets (folders in the layout of ``../shared/data``, PASCAL VOC
with ScribbleSup scribbles, a generated synthetic set), augmentation, the scribble generator, image
and label-map I/O, and the built-in example scene.

Layer: imports only NumPy, SciPy, Pillow and :mod:`admsolve._validation`; never torch, the energies,
the backends or the training side.
"""

from .._support import lazy_names

#: Where each public name lives, imported on first access (PEP 562), so that importing one module of
#: this package (e.g. :mod:`.io` for the command line) does not import SciPy through the others.
_HOMES = {
    "augment": "augment",
    "VOC_CLASSES": "datasets", "FolderDataset": "datasets", "Sample": "datasets", "SyntheticDataset": "datasets",
    "VOCDataset": "datasets", "open_dataset": "datasets", "DERIVED_SPLITS": "datasets", "MaskSupervision": "datasets",
    "Subset": "datasets", "held_out": "datasets",
    "synthetic_scene": "examples",
    "read_image": "io", "read_label_map": "io", "write_label_map": "io",
    "generate_scribbles": "scribbles",
}


__getattr__, __dir__ = lazy_names(__name__, _HOMES)

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
