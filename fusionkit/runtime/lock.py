"""The run-directory lock: one process trains in a run directory at a time.

The lock is the kernel's: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the file ``run.lock``, held open
for the whole run. The kernel releases it when the holder exits or is killed (even by SIGKILL), so
there is no stale lock to take over and no guess about whether a holder is alive. Once the lock is
held, the holder writes ``{"pid": ..., "host": ...}`` into the file; a refused process reads it only
to name the holder in its one-line message, and never decides anything from it (a file it cannot
parse is "a process that is starting").

The locking itself is :class:`fusionkit.utils.locking.FileLock` (own code rather than ``filelock``,
which also uses ``flock``: the refusal must name the holder, and the lock file must be removed on
release without letting a third process lock an unlinked file; both need the file descriptor that
``filelock`` keeps private). After ``flock`` succeeds the holder checks that ``run.lock`` is still
the file it locked (same inode), and starts over if a releasing holder unlinked it meanwhile.

Network filesystems: on NFS, Linux maps ``flock`` onto NFS byte-range locks, which hold across
clients only where the server's lock manager works; on Lustre (without ``-o flock``), CIFS/SMB and
FUSE filesystems such as sshfs a ``flock`` may protect only processes on the same machine. The lock
warns once when the run directory is on such a filesystem: two machines must not train one run
directory there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from fusionkit.errors import RunLockedError
from fusionkit.utils.locking import FileLock

logger = logging.getLogger("fusionkit.train")

LOCK_NAME = "run.lock"
"""File name of the lock in a run directory (:attr:`fusionkit.runtime.rundir.RunDir.lock` is its path)."""

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "gpfs", "beegfs", "ceph", "glusterfs"}
)
"""Filesystem types where ``flock`` may not exclude processes on other machines (a warning is logged)."""


def filesystem_type(path: str | Path) -> str | None:
    """The type (``ext4``, ``nfs4``, ...) of the filesystem holding ``path``, from /proc/self/mounts (None if unknown)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


class RunLock:
    """Exclusive lock on ``run_dir`` for this process; use as a context manager or acquire/release.

    A second :meth:`acquire` in any process (this one included, through another ``RunLock``) is
    refused with :class:`~fusionkit.errors.RunLockedError` while the first is held.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._file = FileLock(self.path, record=lambda: json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._file.held

    def holder(self) -> dict[str, object] | None:
        """What the holder wrote (``pid``, ``host``), or None where the file is absent or not yet written."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _refusal(self) -> RunLockedError:
        holder = self.holder() or {}
        pid, host = holder.get("pid"), holder.get("host")
        if host not in (None, socket.gethostname()):
            who = f"process {pid} on host {host}"
        elif pid is not None:
            who = f"another process (pid {pid})"
        else:
            who = "another process (starting up)"
        return RunLockedError(f"{self.path.parent}: {who} is running this run; wait for it to finish or stop it")

    def acquire(self) -> RunLock:
        """Take the lock (creating the run directory); raises :class:`RunLockedError` if it is held."""
        if self.held:
            raise RunLockedError(f"{self.path.parent}: this RunLock already holds the run")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kind = filesystem_type(self.path.parent)
        if kind in NETWORK_FILESYSTEMS:
            logger.warning(
                "%s is on a %s filesystem, where the run lock may not keep out processes on other machines; "
                "train one run directory from one machine only",
                self.path.parent,
                kind,
            )
        if not self._file.acquire():
            raise self._refusal()
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock if this object holds it (safe to call twice)."""
        self._file.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
