"""The run-directory lock: one process trains in a run directory at a time.

Own code rather than ``filelock``: the lock must name its holder (pid, host) in the refusal and be
taken over when that process is dead, which an ``flock`` lock file does not report.

The lock is the file ``run.lock`` holding ``{"pid": ..., "host": ...}``, created with ``O_EXCL``. A
lock left by a dead process on this host is taken over (with a warning); a lock held by a live
process, or by a process on another host (whose liveness cannot be checked), is refused with one
line that names the holder and the file to delete if the holder is known to be gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from fusionkit.errors import RunLockedError
from fusionkit.runtime.rundir import RunFiles

logger = logging.getLogger("fusionkit.train")

LOCK_NAME = RunFiles(".").lock.name
"""File name of the lock in a run directory (``run.lock``)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive lock on ``run_dir`` for this process; use as a context manager or acquire/release."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable (being written, or garbage): treated as a dead holder
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> RunLock:
        """Take the lock (creating the run directory); raises :class:`RunLockedError` if it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile: try again
                pid, host = holder.get("pid"), holder.get("host")
                if host not in (None, me["host"]):
                    raise RunLockedError(
                        f"{self.path.parent}: the run is locked by process {pid} on host {host}; "
                        f"if that process is gone, delete {self.path}"
                    ) from None
                if isinstance(pid, int) and pid != me["pid"] and _alive(pid):
                    raise RunLockedError(
                        f"{self.path.parent}: another process (pid {pid}) is running this run; "
                        "wait for it to finish or stop it"
                    ) from None
                logger.warning("taking over the stale lock %s of process %s (no longer running)", self.path, pid)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise RunLockedError(f"{self.path}: cannot take the run lock (it keeps changing hands)")

    def release(self) -> None:
        """Remove the lock file if this process holds it (safe to call twice)."""
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
