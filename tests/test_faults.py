"""The fault hook of the kill tests: nothing happens unless FUSIONKIT_FAULT names the point, then
the chosen signal arrives exactly the FUSIONKIT_FAULT_AT-th time the point is reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fusionkit.utils.faults import fault_point

SCRIPT = """
from fusionkit.utils.faults import fault_point
for i in range(1, 6):
    print(i, flush=True)
    fault_point("a")
    fault_point("b")
"""


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONKIT_FAULT")}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env={**base, **env}, timeout=60
    )


def test_unset_does_nothing(monkeypatch) -> None:
    monkeypatch.delenv("FUSIONKIT_FAULT", raising=False)
    for _ in range(3):
        fault_point("a")  # no signal: the test goes on


@pytest.mark.subprocess
def test_the_named_point_gets_the_signal_the_nth_time() -> None:
    killed = _run(FUSIONKIT_FAULT="b", FUSIONKIT_FAULT_AT="3")
    assert killed.returncode == -signal.SIGKILL and killed.stdout.split() == ["1", "2", "3"]
    termed = _run(FUSIONKIT_FAULT="a", FUSIONKIT_FAULT_SIGNAL="TERM")
    assert termed.returncode == -signal.SIGTERM and termed.stdout.split() == ["1"]
    other = _run(FUSIONKIT_FAULT="c")
    assert other.returncode == 0 and other.stdout.split() == ["1", "2", "3", "4", "5"]
