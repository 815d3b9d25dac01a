"""Writing a command's output file with its JSON sidecar: one writer at a time, never a stale pair.

``fusionkit predict --out sub.csv`` writes ``sub.csv`` (and ``sub.sets.csv``) described by the
sidecar ``sub.json``; ``fusionkit export --out model.onnx`` writes ``model.onnx`` and ``model.json``.
Two files cannot be renamed into place at one instant, so the pair is replaced in an order that
never shows a sidecar next to files it does not describe:

1. the old sidecar is removed;
2. each data file is written atomically (temporary file, then rename);
3. the sidecar is written last, atomically, and records each data file's SHA-256
   (:func:`sha256_of`), so a reader can check the pair.

A kill at any point leaves either the old pair, or data files without a sidecar (run the command
again), or the new pair. While it writes, the process holds the lock file ``.<name>.lock`` beside
the output (:class:`~fusionkit.utils.locking.FileLock`): a second process writing the same output
is refused in one line, and the holder first removes the temporary files a killed writer left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fusionkit.errors import ConfigError
from fusionkit.utils.io import atomic_write_text, is_partial_write
from fusionkit.utils.locking import FileLock


def sidecar_path(out: str | Path) -> Path:
    """The sidecar of an output: ``sub.csv`` -> ``sub.json``."""
    return Path(out).with_suffix(".json")


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (what a sidecar records of each file it describes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputPair:
    """The output being written (from :func:`writing_output`): :meth:`begin` before the data files
    are written, :meth:`commit` after."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.sidecar = sidecar_path(out)

    def begin(self) -> None:
        """Remove the old sidecar: from here until :meth:`commit`, no sidecar describes the files."""
        self.sidecar.unlink(missing_ok=True)

    def commit(self, record: dict[str, Any], *, files: Sequence[str | Path]) -> Path:
        """Write the sidecar ``record`` with ``sha256`` (file name -> digest) of the written ``files``."""
        digests = {Path(f).name: sha256_of(f) for f in files}
        atomic_write_text(self.sidecar, json.dumps({**record, "sha256": digests}, indent=2))
        return self.sidecar


@contextlib.contextmanager
def writing_output(out: str | Path, *, also: Sequence[str | Path] = ()) -> Iterator[OutputPair]:
    """Hold the right to write ``out``, its sidecar and ``also`` (removing what a killed writer left).

    Raises:
        ConfigError: another process is writing ``out`` now (one line naming it).
    """
    out = Path(out)
    lock = FileLock(out.with_name(f".{out.name}.lock"))
    if not lock.acquire():
        pid = lock.holder_pid()
        who = f"another process (pid {pid})" if pid is not None else "another process"
        raise ConfigError(f"{out}: {who} is writing this file now; wait for it to finish or choose another --out")
    try:
        pair = OutputPair(out)
        targets = {out.name, pair.sidecar.name, *(Path(p).name for p in also)}
        for path in out.parent.iterdir():  # the temporary files of a writer that was killed
            if is_partial_write(path) and any(path.name.startswith(f".{name}.") for name in targets):
                path.unlink(missing_ok=True)
        yield pair
    finally:
        lock.release()
