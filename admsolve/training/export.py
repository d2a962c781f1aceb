"""Exporting a run's network as one graph that takes pictures as they are: ONNX (``.onnx``, for
onnxruntime and other engines) or TorchScript (``.pt``, ``torch.jit.load``).

The graph takes a float32 RGB batch (N, 3, H, W) with values 0..255 and returns the logits (N, K, H, W)
at the input's size; the network's input normalisation is inside it. Its argmax over K is what
``admsolve predict`` writes for an image run whole (without ``--crf``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..data.io import write_atomically
from .prediction import Predictor

__all__ = ["EXPORT_SUFFIXES", "PixelModel", "export_run"]

#: File types a network is exported to: ONNX and TorchScript.
EXPORT_SUFFIXES = (".onnx", ".pt")
#: The ONNX operator set of the exported graphs.
ONNX_OPSET = 17
#: The batch the graph is traced with (its N, H and W stay free in the export).
EXAMPLE_SHAPE = (1, 3, 64, 64)


class PixelModel(nn.Module):
    """A network of this package taking pixel values: (N, 3, H, W) float RGB in [0, 255] -> its logits
    (N, K, H, W) (the network takes [0, 1] and normalises inside)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model(pixels / 255.0)


def check_export_path(path: str | os.PathLike[str], name: str = "output") -> Path:
    """`path` as a Path if its extension names an export format (.onnx, .pt), else a ValueError."""
    path = Path(path)
    if path.suffix.lower() not in EXPORT_SUFFIXES or path.is_dir():
        raise ValueError(f"{name}: expected a file name ending in {' or '.join(EXPORT_SUFFIXES)} (ONNX or "
                         f"TorchScript), got {str(path)!r}")
    return path


def export_run(run: str | os.PathLike[str], path: str | os.PathLike[str], *,
               checkpoint: str | os.PathLike[str] = "best") -> Path:
    """Export a run's network (see the module's docstring) to `path`, written atomically.

    Parameters
    ----------
    run : str or Path
        A run folder of ``admsolve train``.
    path : str or Path
        ``*.onnx`` (needs the onnx package: ``pip install "admsolve[export]"``) or ``*.pt`` (TorchScript).
    checkpoint : str or Path, optional
        "best" (the default), "last" or a file, as :class:`~admsolve.training.Predictor` takes.

    Returns
    -------
    Path
        `path`.
    """
    path = check_export_path(path)
    if path.suffix.lower() == ".onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it)
        except ImportError as exc:
            raise ImportError(f"output: exporting to ONNX needs the onnx package: pip install \"admsolve[export]\" "
                              f"({exc})") from None
    model = PixelModel(Predictor(run, checkpoint=checkpoint).model).eval()
    example = torch.full(EXAMPLE_SHAPE, 128.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the input checks, which hold for any input
        if path.suffix.lower() == ".pt":
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
            write_atomically(path, lambda stream: torch.jit.save(traced, stream))
        else:
            axes = {0: "batch", 2: "height", 3: "width"}
            write_atomically(path, lambda stream: torch.onnx.export(
                model, (example,), stream, dynamo=False, input_names=["pixels"], output_names=["logits"],
                dynamic_axes={"pixels": axes, "logits": axes}, opset_version=ONNX_OPSET))
    return path
