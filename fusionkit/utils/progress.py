"""When progress bars are drawn: only on a terminal, so a redirected log gets one line per step.

For a bar alone, tqdm's ``disable=None`` is this check; the trainer keeps the answer (``Trainer.progress``).
"""

from __future__ import annotations

import sys


def bars_enabled(requested: bool = True) -> bool:
    """Whether to draw progress bars: ``requested`` and stderr (where tqdm draws) is a terminal."""
    stream = sys.stderr
    return bool(requested) and stream is not None and hasattr(stream, "isatty") and stream.isatty()
