"""Writing output files safely, for every command that writes some: a file is replaced whole or not at
all (:func:`atomic_file`, :func:`write_text`), a line is appended whole or not at all
(:func:`append_line`), and a folder has one writer at a time (:func:`folder_lock`); under torchrun one
process writes and reports (:func:`writes_outputs`).

A failed write (no space left, no permission, the folder gone) raises :class:`WriteError`, an OSError
whose message is one line naming the file and the OS error, and leaves the file as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: The file in a locked folder that carries the lock (and the pid of the process holding it).
LOCK_FILE = ".admsolve.lock"


class WriteError(OSError):
    """Writing a file failed; ``errno`` is the OS error's and the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


class FolderLocked(OSError):
    """Another process holds the lock of the folder (see :func:`folder_lock`)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or one it was raised from or while handling (torch's zip
    writer turns the error of the file it writes into a RuntimeError), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_error(path: Path, cause: OSError) -> WriteError:
    if isinstance(cause, WriteError):
        return cause
    code = cause.errno
    reason = cause.strerror or str(cause) or type(cause).__name__
    symbol = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    return WriteError(code, f"cannot write {str(path)!r}: {reason}{symbol}")


#: Numbers the temporary files of this process's writes.
_writes = itertools.count()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """A file object whose contents replace `path` as a whole when the ``with`` block ends.

    It is a temporary file beside `path` (``NAME.PID.N.tmp``: its own for each write, so that two
    processes writing `path` at once each replace it whole), synced to the disk and renamed over
    `path`, so that `path` is always either its old contents or the new ones, whatever stops the process.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder must exist.
    mode : str, optional
        ``"wb"`` (bytes) or ``"w"`` (UTF-8 text).

    Raises
    ------
    WriteError
        When writing, syncing or renaming fails (also when the OSError reaches the block wrapped in
        another exception): one line naming `path` and the OS error; `path` is left as it was and
        the temporary file removed. Any other exception from the block is re-raised as it is, after
        the temporary file is removed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{next(_writes)}.tmp")
    try:
        with open(temporary, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        cause = _os_error(exc) if isinstance(exc, Exception) else None
        if cause is None:
            raise
        raise _write_error(path, cause) from None


def writes_outputs() -> bool:
    """Whether this process writes the output files and prints the results: True but in a torchrun process of
    rank other than 0 (its RANK, known before any process group starts)."""
    return int(os.environ.get("RANK", "0")) == 0


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file `path` by `text` (UTF-8) as a whole, see :func:`atomic_file`."""
    with atomic_file(path, "w") as stream:
        stream.write(text)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append `line` (ending in a newline) to the file `path`, created if missing, whole or not at all:
    when the write fails, the file is cut back to its size before it (no torn last line) and a
    :class:`WriteError` names the file and the OS error."""
    path = Path(path)
    size = None
    try:
        with open(path, "a", encoding="utf-8") as stream:
            size = stream.tell()
            stream.write(line)
    except OSError as exc:  # the close flushes: a full disk shows there at the latest
        if size is not None:
            with contextlib.suppress(OSError):
                os.truncate(path, size)
        raise _write_error(path, exc) from None


#: The folders this process holds locked: resolved path -> [open lock file, times entered].
_held: dict[Path, list] = {}
_held_guard = threading.Lock()


def _forget_held_locks() -> None:
    """In a forked child (a DataLoader worker): close its copies of the lock files, so that the lock
    ends with the process that took it (the lock stays with the parent's copy)."""
    for stream, _ in _held.values():
        with contextlib.suppress(OSError):
            stream.close()
    _held.clear()


os.register_at_fork(after_in_child=_forget_held_locks)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], name: str = "out") -> Iterator[Path]:
    """Hold the folder `folder` for writing while the ``with`` block runs: a second process asking for
    it is refused. Readers take no lock and are never blocked.

    The lock is the OS's (``fcntl.flock`` on ``folder/.admsolve.lock``, which holds the holder's
    pid): it ends when the process ends, killed or crashed included, and a new process can then take
    it. The same process may enter it again (a command that writes a folder and then, inside it,
    calls another that writes the same folder); the lock is released when the outermost block ends.

    Parameters
    ----------
    folder : str or os.PathLike
        An existing folder.
    name : str, optional
        The argument that named the folder, for the error message.

    Raises
    ------
    FolderLocked
        When another process holds it: one line naming the folder and that process's pid.
    FileNotFoundError
        When `folder` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: no such folder {str(folder)!r}")
    key = folder.resolve()
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_take(key, folder, name), 1]
    try:
        yield folder
    finally:
        with _held_guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                _held.pop(key)[0].close()  # closing the file releases the lock


def _take(key: Path, folder: Path, name: str) -> IO:
    """The lock file of `key`, opened and locked, with this process's pid in it."""
    path = key / LOCK_FILE
    try:
        stream = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.seek(0)
        holder = stream.read().strip()
        stream.close()
        who = f"pid {holder}" if holder.isdigit() else "pid unknown"
        raise FolderLocked(errno.EWOULDBLOCK, f"{name}: {str(folder)!r} is being written by another process "
                                              f"({who}); wait until it ends, or write to another folder") from None
    except OSError as exc:
        stream.close()
        raise _write_error(path, exc) from None
    try:
        stream.truncate(0)
        stream.write(f"{os.getpid()}\n")
        stream.flush()
    except OSError as exc:
        stream.close()
        raise _write_error(path, exc) from None
    return stream
