"""A progress bar over a known number of items (images), redrawn in place on a terminal."""

from __future__ import annotations

import sys
from typing import TextIO


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
