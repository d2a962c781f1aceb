"""Two small helpers of the package's surface: packages whose public names are imported on first use
(PEP 562, :func:`lazy_names`), so that importing a package does not import the heavy modules (torch,
SciPy) of names a caller never touches; and a progress bar over a known number of items
(:class:`ProgressBar`)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TextIO


def lazy_names(package: str, homes: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for `package`: each name of `homes` is imported from its module
    (``homes[name]``, relative to the package) on first access and then kept in the package."""

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__


class ProgressBar:
    """``label [#####.....] done/total`` on one line of `stream` (stderr by default), redrawn by
    :meth:`update` when the stream is a terminal and `enabled`; elsewhere (a pipe, a log file) nothing
    is drawn. :meth:`close` ends the line if one was drawn."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = sys.stderr if stream is None else stream
        self.live = enabled and self.stream.isatty()
        self.drawn = False

    def update(self, done: int, total: int | None = None) -> None:
        """Show `done` items of `total` (default: the total given when the bar was made)."""
        if not self.live:
            return
        total = self.total if total is None else total
        filled = int(20 * done / max(total, 1))
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total}  ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
