"""``train.log``: the ``fusionkit`` log records of a run, written into its directory while it trains."""

from __future__ import annotations

import logging
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of a ``train.log`` line."""


class RunLog:
    """Writes the ``fusionkit`` loggers' records to ``path`` from :meth:`open` to :meth:`close`.

    The file gets the INFO records (the epoch lines): where the ``fusionkit`` logger would drop them
    its level is lowered to INFO while the log is open and put back on :meth:`close`, so nothing
    outlives the run. A handler already writing to ``path`` is not added twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handler: logging.Handler | None = None
        self._level: int | None = None

    def open(self) -> RunLog:
        """Start writing (idempotent)."""
        if self._handler is not None:
            return self
        logger = logging.getLogger("fusionkit")
        handler = logging.FileHandler(self.path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if logger.getEffectiveLevel() > logging.INFO:
            self._level = logger.level
            logger.setLevel(logging.INFO)
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == handler.baseFilename for h in logger.handlers
        ):
            logger.addHandler(handler)
        self._handler = handler
        return self

    def close(self) -> None:
        """Stop writing, close the file, put the logger's level back (safe to call twice)."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        logger = logging.getLogger("fusionkit")
        logger.removeHandler(handler)
        handler.close()
        if self._level is not None:
            logger.setLevel(self._level)
            self._level = None
