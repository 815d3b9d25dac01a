"""Exception types shared by every part of fusionkit.

User errors (bad files, bad configs, impossible requests) derive from :class:`FusionkitError`;
the command line prints their message on one line and exits non-zero without a traceback.
Spec validation errors are pydantic's own ``ValidationError`` (it names the field path).
"""

from __future__ import annotations

from pathlib import Path


class FusionkitError(Exception):
    """Base class of every user-facing fusionkit error (the CLI prints it without a traceback)."""


class DataError(FusionkitError):
    """A data file does not match the expected MILK10k layout or vocabulary.

    The message always names the file and, where they apply, the row (1-based line number in the
    CSV, counting the header as line 1) and the lesion, and says what was expected.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        lesion_id: str | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.row = row
        self.lesion_id = lesion_id
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"line {row}")
        if lesion_id is not None:
            where.append(f"lesion {lesion_id}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class PretrainedWeightsError(FusionkitError):
    """Pretrained weights were asked for but cannot be had (offline hub, no such tag, bad file)."""


class ConfigError(FusionkitError):
    """A run configuration, preset name, override or run directory is not usable."""


class MissingModalityError(FusionkitError, ValueError):
    """A sample in a batch has no modality present at all, so no branch can decide for it."""
