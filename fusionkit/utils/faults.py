"""Deterministic fault injection: a process kills itself at a named point, for the kill tests.

``fault_point(name)`` is placed at each phase of a command (``fusionkit train``: the run directory
claimed, an image written into the cache, a training batch, a file written but not yet renamed,
...). It does nothing unless the environment variable ``FUSIONKIT_FAULT`` names the point: then,
the ``FUSIONKIT_FAULT_AT``-th time (default 1) the process reaches it, the process sends itself
``FUSIONKIT_FAULT_SIGNAL``: ``KILL`` (the default), ``TERM``, ``INT``, or ``STOP`` (paused there
until a SIGCONT, so a test can act while a process holds a point). SIGKILL ends the process there
and then, as a power cut or the out-of-memory killer would; SIGTERM and SIGINT go through the
process's own handlers, as a scheduler's or a user's stop would.

Only the kill tests set these variables (``tests/test_kills.py`` lists the points); unset, a call
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

FAULT_ENV = "FUSIONKIT_FAULT"
"""Names the point to fail at (exact match)."""
FAULT_AT_ENV = "FUSIONKIT_FAULT_AT"
"""Which time the point is reached that fails (1-based; default 1)."""
FAULT_SIGNAL_ENV = "FUSIONKIT_FAULT_SIGNAL"
"""The signal sent: KILL (default), TERM, INT or STOP."""

_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT, "STOP": signal.SIGSTOP}
_reached: dict[str, int] = {}
_count_lock = threading.Lock()  # the image cache reaches its point from several threads


def fault_point(name: str) -> None:
    """Send this process the configured signal if ``FUSIONKIT_FAULT`` is ``name`` and this is the
    ``FUSIONKIT_FAULT_AT``-th time it is reached; otherwise do nothing."""
    if os.environ.get(FAULT_ENV) != name:
        return
    with _count_lock:
        _reached[name] = count = _reached.get(name, 0) + 1
    if count != int(os.environ.get(FAULT_AT_ENV) or 1):
        return
    signum = _SIGNALS[os.environ.get(FAULT_SIGNAL_ENV, "KILL").upper().removeprefix("SIG")]
    os.kill(os.getpid(), signum)
