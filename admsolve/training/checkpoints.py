"""The files of a run folder: ``config.json``, ``checkpoint.pt`` (replaced atomically) and
``metrics.jsonl`` (one record per evaluated epoch)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from .config import TrainConfig


def atomic_save(obj, path: Path) -> None:
    """torch.save `obj` to `path` through a temporary file, so that `path` is always whole."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def load_model_state(path) -> dict:
    """A model state dict from a run's checkpoint or from a plain state-dict file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init: no such file {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if isinstance(state, dict) and "model" in state else state


def write_records(path: Path, records: list[dict]) -> None:
    """Replace the JSON-lines file `path` by `records`, atomically."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(temporary, path)


def read_metrics(run) -> list[dict]:
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

    def __init__(self, run: Path, *, tensorboard: bool = False, enabled: bool = True):
        self.path, self.enabled, self.writer = Path(run) / "steps.jsonl", enabled, None
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(values) + "\n")
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


def write_config(run: Path, config: TrainConfig) -> None:
    (Path(run) / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_config(run) -> TrainConfig:
    """The TrainConfig stored in ``RUN/config.json``."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"run: no config.json in {str(run)!r}: not a run folder")
    return TrainConfig.from_dict(json.loads(path.read_text()))
