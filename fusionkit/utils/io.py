"""Atomic file writes: write a temporary file in the same folder, then rename over the target.

The written file gets the mode an ordinary ``open(path, "w")`` would give it: a replaced file keeps
its mode, a new one gets ``0o666`` less the umask (``mkstemp`` alone would make every file 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fusionkit.utils.faults import fault_point


def file_mode(path: str | os.PathLike[str]) -> int:
    """The mode a write to ``path`` should leave: the existing file's, else ``0o666 & ~umask``."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


PARTIAL_SUFFIX = ".tmp"
"""Suffix of :func:`atomic_open`'s temporary files (``.<name>.<random>.tmp`` beside the target)."""


def is_partial_write(path: str | Path) -> bool:
    """Whether ``path`` is the temporary file of an :func:`atomic_open` write (left behind when the
    writer was killed before its rename: never a finished file)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX) and name.count(".") >= 3


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files of killed atomic writes directly in ``folder``; returns them.

    Call it only while no other process can be writing there (e.g. holding the run lock)."""
    folder = Path(folder)
    removed = [p for p in folder.iterdir() if p.is_file() and is_partial_write(p)] if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it is fsynced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode_ = file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode_)
        fault_point("write.before-rename:" + path.name)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.filename is None:  # a full disk or an I/O error names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
