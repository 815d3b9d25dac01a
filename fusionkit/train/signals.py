"""SIGINT (Ctrl-C) and SIGTERM during training: the first asks the run to stop after its batch, the second stops it at once."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType, TracebackType

from tqdm.auto import tqdm

from fusionkit.errors import RunInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals a training run catches."""


class Interrupts:
    """A stop request for a run in ``run_dir``; as a context manager it catches :data:`SIGNALS`.

    Inside ``with``, a first signal records its number (:attr:`signum`; the loop saves a resumable
    checkpoint and calls :meth:`raise_if_requested`); a second raises
    :class:`~fusionkit.errors.RunInterrupted` at once. The previous handlers come back on exit.
    Outside the main thread no handler is installed (only :meth:`request` stops the run).
    """

    def __init__(self, *, run_dir: Path, announce: bool) -> None:
        self.run_dir = run_dir
        self.announce = announce
        self.signum = 0
        """The signal number a stop was requested with; 0 while none was."""
        self._previous: dict[int, object] = {}

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to stop as a first ``signum`` would."""
        self.signum = int(signum)

    def raise_if_requested(self) -> None:
        """Raise :class:`~fusionkit.errors.RunInterrupted` when a stop was requested."""
        if self.signum:
            raise RunInterrupted(self.signum, self.run_dir)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002
        if self.signum:  # a second signal: stop at once
            raise RunInterrupted(signum, self.run_dir)
        self.request(signum)
        if self.announce:
            tqdm.write("interrupt: finishing this batch and saving a resumable checkpoint ...", file=sys.stderr)

    def __enter__(self) -> Interrupts:
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}
