"""An exclusive lock on a file through the kernel (``fcntl.flock``), for writers outside a run directory.

The image cache (one builder of a cache at a time), ``fusionkit predict --out`` / ``export --out``
(one writer of an output at a time) and ``fusionkit sweep`` (one sweep per folder) take it; a run
directory has its own lock (:mod:`fusionkit.runtime.lock`), which names the holding host too. The
kernel drops the lock when its process ends, however it ends (SIGKILL included), so a lock file
left behind is never a holder. The holder writes its pid into the file after locking, only for a
refusal message. Like the run lock, ``flock`` may not exclude processes on other machines on some
network filesystems (Lustre without ``-o flock``, SMB, sshfs).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path


class FileLock:
    """Exclusive lock on the file ``path`` (created if needed, removed on release).

    ``record`` gives what the holder writes into the file once it holds the lock (default: its pid).
    """

    def __init__(self, path: str | Path, *, record: Callable[[], str] | None = None) -> None:
        self.path = Path(path)
        self.record = record or (lambda: str(os.getpid()))
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def holder_pid(self) -> int | None:
        """The pid the holder wrote, or None (no file, or a holder that has not written it yet)."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def acquire(self, *, wait: bool = False) -> bool:
        """Take the lock; ``wait``: block until it is free, else return False at once when it is held
        (or, after 100 tries, when it keeps changing hands)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this lock is already held")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, flags)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, self.record().encode())
            self._fd = fd
            return True
        return False

    def release(self) -> None:
        """Remove the lock file and drop the lock (safe to call twice)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one locks the removed file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
