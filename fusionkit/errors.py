"""Exception types shared by every part of fusionkit.

User errors (bad files, bad configs, impossible requests) derive from :class:`FusionkitError`;
the command line prints their message on one line and exits non-zero without a traceback.
Spec validation errors are pydantic's own ``ValidationError`` (it names the field path); read from a
file, they become a one-line :class:`ConfigFieldError` naming the file.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TypedDict


class FusionkitError(Exception):
    """Base class of every user-facing fusionkit error (the CLI prints it without a traceback).

    ``exit_code`` is the command line's exit status for it: 2 (a user error) unless a subclass says.
    """

    exit_code: int = 2


class DataLocation(TypedDict, total=False):
    """Where in the data a problem lies: the keyword arguments of :class:`DataError` (``**where``)."""

    path: str | Path | None
    row: int | None
    lesion_id: str | None


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


class ConfigFieldError(ConfigError, ValueError):
    """A config or spec file whose content fails validation (pydantic's ``ValidationError``, in one line).

    The message names the file and every failing field path (``train.lr: Input should be ...``);
    :meth:`errors` gives pydantic's error records (``loc``, ``msg``, ``type``) for programs. A
    ``ValueError`` too, as pydantic's ``ValidationError`` is.
    """

    def __init__(self, message: str, *, errors: list[dict] | None = None) -> None:
        self._errors = list(errors or [])
        super().__init__(message)

    def errors(self) -> list[dict]:
        """pydantic's error records of the failed validation (``loc``, ``msg``, ``type``, ...)."""
        return list(self._errors)


class MissingModalityError(FusionkitError, ValueError):
    """A sample in a batch has no modality present at all, so no branch can decide for it."""


class RunLockedError(ConfigError):
    """Another live process holds the run directory's lock (``run.lock``)."""


class DivergenceError(FusionkitError):
    """Training diverged: the loss (or a weight) became NaN or infinite during ``epoch`` (1-based).

    The run directory keeps the last good checkpoint (``last``: the end of epoch ``epoch - 1``; none
    when ``epoch`` is 1). The command line exits with status 1.
    """

    exit_code = 1

    def __init__(self, message: str, *, epoch: int) -> None:
        self.epoch = epoch
        super().__init__(message)


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after saving a resumable ``last`` checkpoint.

    The command line exits with ``128 + signum``: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int, run_dir: Path | None = None) -> None:
        self.signum = signum
        self.run_dir = run_dir
        super().__init__(signum)

    @property
    def exit_code(self) -> int:
        """``128 + signum`` (the shell's convention for a process ended by a signal)."""
        return 128 + self.signum


EXTRAS: dict[str, str] = {
    "onnx": "export",
    "onnxruntime": "export",
    "tensorboard": "tracking",
    "mlflow": "mlflow",
    "submitit": "cluster",
    "optuna": "tune",
    "gradio": "demo",
    "open-clip-torch": "clip",
}
"""Each optional dependency, named as its requirement in pyproject.toml (also its import name, except
``open-clip-torch``, imported as ``open_clip``), and the extra of ``jiadf-fusion`` that installs it."""


class MissingExtraError(ConfigError):
    """An optional dependency that the config or command asks for is not installed.

    The message is one line naming the feature and the extra that installs the dependency.
    """

    def __init__(self, what: str, *, package: str) -> None:
        self.package = package
        self.extra = EXTRAS[package]
        super().__init__(f"{what} needs the {self.extra} extra: pip install 'jiadf-fusion[{self.extra}]'")


def require_extra(package: str, *, what: str, module: str | None = None) -> ModuleType:
    """Import the optional dependency ``package`` (or ``module``, which needs it), or raise
    :class:`MissingExtraError` naming its extra.

    ``what`` names the feature in the message: ``require_extra("onnx", what="ONNX export")`` fails
    with ``ONNX export needs the export extra: pip install 'jiadf-fusion[export]'``. ``package``
    must be a key of :data:`EXTRAS`; ``module`` is what to import when that is not the package
    itself (``torch.utils.tensorboard`` for ``tensorboard``).
    """
    if package not in EXTRAS:
        raise KeyError(f"{package!r} is not an optional dependency of fusionkit; known: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module or package)
    except ImportError as exc:
        raise MissingExtraError(what, package=package) from exc
