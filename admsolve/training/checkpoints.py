"""The files of a run folder: ``config.json``, ``model.json`` (what the network is: its labels, their
names, the model, its input), ``checkpoint.pt`` (replaced atomically), ``checkpoint-best.pt`` (the
network of the best validation mIoU) and ``metrics.jsonl`` (one record per evaluated epoch)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import append_line, atomic_file, folder_lock, write_text, writes_outputs
from .._validation import UNLABELED
from .config import TrainConfig

#: The network's description in a run folder: enough, with a checkpoint, to apply it to new images.
MODEL_FILE = "model.json"
#: The checkpoint of the best validation mIoU, beside the last one (``checkpoint.pt``).
BEST_CHECKPOINT = "checkpoint-best.pt"


def atomic_save(obj: object, path: Path) -> None:
    """torch.save `obj` to `path` through a temporary file, so that `path` is always whole (a failed
    write raises :class:`admsolve._files.WriteError` naming `path` and leaves it as it was)."""
    with atomic_file(path) as stream:
        torch.save(obj, stream)


def _first_line(exc) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str], name: str = "checkpoint") -> Any:
    """What a checkpoint or state-dict file holds, read with ``torch.load(weights_only=True)``: tensors,
    numbers, strings and plain containers only, so that loading runs no code from the file.

    A file that holds anything else is refused, as is a damaged one (empty, truncated, not a torch
    file), with a one-line ValueError naming the file; a missing one raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsafe or "Weights only load failed" in str(exc) and zipfile.is_zipfile(path):
            what = f"{unsafe.group(1)}, which is" if unsafe else "something that is"
            raise ValueError(f"{name}: {str(path)!r} cannot be loaded safely: it holds {what} not a tensor, number, "
                             f"string or plain container; refused, since loading it could run code") from None
        raise ValueError(f"{name}: {str(path)!r} is not a readable torch checkpoint (damaged or truncated?): "
                         f"{_first_line(exc)}") from None
    except Exception as exc:  # empty (EOFError), truncated (RuntimeError), random bytes (anything)
        reason = _first_line(exc) if str(exc).strip() else f"{type(exc).__name__}, the file is empty or cut short"
        raise ValueError(f"{name}: {str(path)!r} is not a readable torch checkpoint (damaged or truncated?): "
                         f"{reason}") from None


def load_model_state(path: str | os.PathLike[str], model: torch.nn.Module | None = None, name: str = "init") -> dict:
    """A model state dict from a run's checkpoint or from a plain state-dict file (loaded safely, see
    :func:`load_checkpoint`); checked against `model` when given (see :func:`check_model_state`)."""
    state = load_checkpoint(path, name)
    state = state["model"] if isinstance(state, dict) and "model" in state else state
    if model is not None:
        check_model_state(model, state, path, name)
    return state


def check_model_state(model: torch.nn.Module, state: object, path: str | os.PathLike[str],
                      name: str = "checkpoint") -> None:
    """A ValueError naming `path` and the first tensor of `model` that `state` lacks or holds with
    another shape (instead of load_state_dict's multi-line RuntimeError)."""
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise ValueError(f"{name}: {str(path)!r} holds no network state (a dict of tensors), got {type(state).__name__}")
    expected = model.state_dict()
    for key, tensor in expected.items():
        got = state.get(key)
        if got is None:
            raise ValueError(f"{name}: {str(path)!r} holds a network of another shape: it has no tensor {key!r} "
                             f"(here {tuple(tensor.shape)})")
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"{name}: {str(path)!r} holds a network of another shape: {key} is {shape} there, "
                             f"{tuple(tensor.shape)} here")
    extra = [key for key in state if key not in expected]
    if extra:
        raise ValueError(f"{name}: {str(path)!r} holds a network of another shape: tensor {extra[0]!r} is not in "
                         f"this network ({len(extra)} such)")


def rng_state() -> dict:
    """The torch (CPU and CUDA) and NumPy global random states, as tensors and numbers (weights_only-safe)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor.cpu() for tensor in state["cuda"]])


def write_records(path: Path, records: list[dict]) -> None:
    """Replace the JSON-lines file `path` by `records`, atomically."""
    write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def read_metrics(run: str | os.PathLike[str]) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (a list of dicts)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class StepLog:
    """Per-step scalars of a run: ``steps.jsonl`` (one line per optimizer step) and, with
    `tensorboard`, TensorBoard event files in ``RUN/tensorboard`` (steps and epochs).

    Parameters
    ----------
    run : Path
    tensorboard : bool
        Needs the ``tensorboard`` package (an ImportError names it).
    enabled : bool
        False in every process but the one that writes the run folder.
    """

    def __init__(self, run: Path, *, tensorboard: bool = False, enabled: bool = True) -> None:
        self.path, self.enabled, self.writer = Path(run) / "steps.jsonl", enabled, None
        self.written = False  # the first write creates the run folder if missing; later ones fail if it vanished
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("tensorboard: --tensorboard needs the tensorboard package: "
                                  "pip install tensorboard") from None
            self.writer = SummaryWriter(str(Path(run) / "tensorboard"))

    def write(self, values: dict) -> None:
        """Append one step's scalars (``iteration`` among them)."""
        if not self.enabled:
            return
        if not self.written:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        append_line(self.path, json.dumps(values) + "\n")
        self.written = True
        if self.writer is not None:
            for name, value in values.items():
                if name != "iteration":
                    self.writer.add_scalar(f"step/{name}", value, values["iteration"])

    def epoch(self, record: dict) -> None:
        """An epoch's record, to TensorBoard."""
        if self.writer is not None:
            for name, value in record.items():
                if isinstance(value, (int, float)) and name not in ("epoch", "iteration"):
                    self.writer.add_scalar(f"epoch/{name}", value, record["iteration"])
            self.writer.flush()

    def truncate(self, iteration: int) -> None:
        """Drop the steps after `iteration` (those of an epoch a resumed run trains again)."""
        if self.enabled and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["iteration"] <= iteration]
            write_records(self.path, [json.loads(line) for line in kept])


def lock_folder(folder: str | os.PathLike[str], name: str = "out") -> contextlib.AbstractContextManager:
    """:func:`admsolve._files.folder_lock` of the existing folder `folder`, in the process that writes
    it (:func:`admsolve._files.writes_outputs`: under torchrun rank 0 alone, the other ranks writing
    nothing there)."""
    if not writes_outputs():
        return contextlib.nullcontext()
    return folder_lock(folder, name)


def write_config(run: Path, config: TrainConfig) -> None:
    write_text(Path(run) / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_config(run: str | os.PathLike[str]) -> TrainConfig:
    """The TrainConfig stored in ``RUN/config.json``."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"run: no config.json in {str(run)!r}: not a run folder")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"run: {str(path)!r} is not readable JSON ({_first_line(exc)})") from None
    if not isinstance(values, dict):
        raise ValueError(f"run: expected the settings of a run (a JSON object) in {str(path)!r}, "
                         f"got {type(values).__name__}")
    return TrainConfig.from_dict(values)


def write_model_info(run: str | os.PathLike[str], *, n_labels: int, class_names: list[str], model: str,
                     normalization: dict | None) -> None:
    """Write ``RUN/model.json`` (atomically): the number of labels, their names, the model (a name of
    :data:`~admsolve.training.config.MODELS` or "package.module:factory") and its input: RGB images
    (N, 3, H, W), float pixel / 255, normalised inside the network as ``normalization`` says
    (``{"mean", "std"}`` per channel, or None where the network is the user's)."""
    info = {"n_labels": int(n_labels), "class_names": [str(name) for name in class_names], "model": model,
            "input": "RGB (N, 3, H, W), float pixel / 255 in [0, 1]", "normalization": normalization}
    write_text(Path(run) / MODEL_FILE, json.dumps(info, indent=2) + "\n")


def read_model_info(run: str | os.PathLike[str]) -> dict:
    """``RUN/model.json`` checked (see :func:`write_model_info`): a dict with ``n_labels``,
    ``class_names``, ``model`` and ``normalization``; a one-line ValueError naming the file when it is
    damaged, FileNotFoundError when it is absent."""
    path = Path(run) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run: no {MODEL_FILE} in {str(run)!r} (a run trained before runs recorded "
                                f"their network; 'admsolve evaluate RUN' writes it)")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"run: {str(path)!r} is not readable JSON ({_first_line(exc)})") from None
    n_labels = info.get("n_labels") if isinstance(info, dict) else None
    if isinstance(n_labels, bool) or not isinstance(n_labels, int) or not 1 <= n_labels <= UNLABELED:
        raise ValueError(f"run: expected n_labels, an integer in [1, {UNLABELED}], in {str(path)!r}, "
                         f"got {n_labels!r}")
    names = info.get("class_names")
    if not isinstance(names, list) or len(names) != n_labels or not all(isinstance(n, str) for n in names):
        raise ValueError(f"run: expected class_names, a list of {n_labels} strings, in {str(path)!r}, "
                         f"got {str(names)[:80]}")
    if not isinstance(info.get("model"), str):
        raise ValueError(f"run: expected model, a name, in {str(path)!r}, got {info.get('model')!r}")
    return info
