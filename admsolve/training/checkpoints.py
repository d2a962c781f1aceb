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


def write_config(run: Path, config: TrainConfig) -> None:
    (Path(run) / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_config(run) -> TrainConfig:
    """The TrainConfig stored in ``RUN/config.json``."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"run: no config.json in {str(run)!r}: not a run folder")
    return TrainConfig.from_dict(json.loads(path.read_text()))
