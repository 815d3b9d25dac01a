"""The run directory as one object: its files (each name written once), its state, and the one way to claim it.

A run directory holds::

    config.yaml                    the resolved run config (the model spec in full)
    metadata_encoder.json          the metadata encoding fitted on the training split
    split.json                     the lesion ids of the training and validation splits and of the
                                   held-out test part ("test", empty without data.test_fraction)
    checkpoints/last.safetensors   model, optimizer, scheduler, RNG state (resumable)
    checkpoints/best.safetensors   the weights with the best validation score
    history.json / train.log       one record/line per epoch
    resumes.json                   one record per resume (when, from where, what changed)
    run.lock                       pid and host of the process training it (while it trains)
    inference.json                 the decision rule (thresholds fitted on the validation split at the
                                   end of training), validation metrics, training population
    report.md, metrics.*, *.png    the evaluation of the best checkpoint (fusionkit.evaluate), on the
                                   test part when there is one; evaluated.json says which lesions
    in-sample/                     an evaluation of training lesions, when asked for (never report.md)

:class:`RunDir` names them (one property each), says what the folder holds (:attr:`RunDir.state`)
and is claimed once per run (:meth:`RunDir.claim`): the lock first (:class:`~fusionkit.runtime.lock.RunLock`),
then the decision (start, continue, start over, refuse) on what the folder holds under the lock.
The trainer and the sweep both claim through it; the comparison of a saved config with a
requested one is :func:`config_changes`, here once.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig, load_run_config
from fusionkit.runtime.lock import LOCK_NAME, RunLock
from fusionkit.utils.io import remove_partial_writes

logger = logging.getLogger("fusionkit.train")

SYNTHETIC_DIR = "synthetic"
"""The folder a run generates its synthetic MILK10k set into (``--synthetic``)."""

SCRATCH = frozenset({LOCK_NAME, SYNTHETIC_DIR})
"""Names in a run directory that do not make it a run (the lock; the generated data set)."""

Resume = bool | Literal["auto"]
"""How a claim treats a run already in the folder: ``False`` refuses it, ``True`` continues it,
``"auto"`` continues it when it was started with the requested config and starts it over otherwise
(what a sweep does with its jobs' folders)."""


class RunState(enum.Enum):
    """What a run directory holds (:attr:`RunDir.state`)."""

    EMPTY = "empty"
    """Absent, or nothing but scratch (the lock, a generated data set)."""
    FRESH = "fresh"
    """A run's ``config.yaml`` but no ``last`` checkpoint: it stopped before its first epoch ended."""
    RESUMABLE = "resumable"
    """A ``last`` checkpoint to continue from; not evaluated yet."""
    FINISHED = "finished"
    """Trained and evaluated: its ``report.md`` is written."""
    FOREIGN = "foreign"
    """Files, but no fusionkit run (no ``config.yaml``): never deleted."""


@dataclass(frozen=True)
class RunStart:
    """How a run starts in its directory: ``saved`` config (when resuming from a checkpoint)."""

    saved: RunConfig | None
    """The run's own config when it resumes from a checkpoint, else ``None`` (a fresh start)."""
    restarted: bool = False
    """``resume`` was asked for but there was no checkpoint: the run starts from the beginning."""

    @property
    def from_checkpoint(self) -> bool:
        """Whether training continues from ``last.safetensors``."""
        return self.saved is not None


def _diff(a: Any, b: Any, path: str, unset_matches: bool) -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if unset_matches and key not in b:
                continue
            out += _diff(a.get(key), b.get(key), f"{path}.{key}" if path else key, unset_matches)
        return out
    if unset_matches and b is None:
        return []
    return [] if a == b else [(path, a, b)]


def config_changes(
    saved: RunConfig, new: RunConfig, *, synthetic: bool, unset_matches: bool = False
) -> list[tuple[str, Any, Any]]:
    """The fields (dotted paths) where ``new`` differs from ``saved``, as ``(path, old, new)``, sorted.

    ``data.synthetic`` counts only with ``synthetic`` (the generated set's settings matter only
    then). With ``unset_matches`` a field ``new`` leaves unset (``None``) matches whatever
    ``saved`` holds: what training resolves (class weights, class prior, the data root) is not a change.
    """
    old, cur = saved.model_dump(mode="json"), new.model_dump(mode="json")
    if not synthetic:
        for dump in (old, cur):
            dump["data"].pop("synthetic", None)
    return _diff(old, cur, "", unset_matches)


class RunDir:
    """The run directory ``root``: its files (see the module docstring), its :attr:`state`, its claim.

    A ``RunDir`` that :meth:`claim` ed the folder holds its lock until :meth:`release` (or
    :meth:`abandon`, which also removes what a failed start left in a folder it created).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock: RunLock | None = None
        self._created = False

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- the files -----------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The resolved run config (``config.yaml``)."""
        return self.root / "config.yaml"

    @property
    def metadata_encoder(self) -> Path:
        """The fitted metadata encoding (``metadata_encoder.json``)."""
        return self.root / "metadata_encoder.json"

    @property
    def split(self) -> Path:
        """The training, validation and held-out test lesion ids (``split.json``)."""
        return self.root / "split.json"

    @property
    def checkpoints(self) -> Path:
        """The checkpoint folder."""
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.safetensors`` (``best`` or ``last``)."""
        return self.checkpoints / f"{name}.safetensors"

    @property
    def last(self) -> Path:
        """The resumable checkpoint (``checkpoints/last.safetensors``)."""
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        """The weights with the best validation score (``checkpoints/best.safetensors``)."""
        return self.checkpoint("best")

    @property
    def history(self) -> Path:
        """One JSON record per epoch (``history.json``)."""
        return self.root / "history.json"

    @property
    def log(self) -> Path:
        """The training log (``train.log``)."""
        return self.root / "train.log"

    @property
    def resumes(self) -> Path:
        """One record per resume (``resumes.json``)."""
        return self.root / "resumes.json"

    @property
    def lock(self) -> Path:
        """The run lock (``run.lock``), present while a process trains the run."""
        return self.root / LOCK_NAME

    @property
    def synthetic(self) -> Path:
        """The generated MILK10k set of a ``--synthetic`` run (``synthetic/``)."""
        return self.root / SYNTHETIC_DIR

    @property
    def report(self) -> Path:
        """The evaluation report (``report.md``)."""
        return self.root / "report.md"

    @property
    def metrics(self) -> Path:
        """The report's metrics (``metrics.json``)."""
        return self.root / "metrics.json"

    @property
    def evaluated(self) -> Path:
        """Which lesions the report evaluated (``evaluated.json``; absent for the validation split)."""
        return self.root / "evaluated.json"

    @property
    def inference(self) -> Path:
        """What predicting needs beyond the weights, fitted at the end of training (``inference.json``):
        the decision rule with its thresholds, the validation metrics, the training population."""
        return self.root / "inference.json"

    # -- what it holds ---------------------------------------------------------------------------------
    def _others(self) -> list[str]:
        """The entries that are not scratch, sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.name not in SCRATCH) if self.root.is_dir() else []

    @property
    def state(self) -> RunState:
        """What the folder holds now (:class:`RunState`)."""
        if not self.config.is_file():
            return RunState.FOREIGN if self._others() else RunState.EMPTY
        if self.report.is_file():
            return RunState.FINISHED
        return RunState.RESUMABLE if self.last.is_file() else RunState.FRESH

    def saved_config(self) -> RunConfig | None:
        """The run's own config, or ``None`` where there is none or it cannot be read."""
        if not self.config.is_file():
            return None
        try:
            return load_run_config(self.config)
        except Exception:  # noqa: BLE001 - an unreadable config means: not this run
            return None

    def matches(self, requested: RunConfig, *, synthetic: bool = False) -> bool:
        """Whether the saved config is ``requested`` (fields ``requested`` leaves unset match; :func:`config_changes`)."""
        saved = self.saved_config()
        return saved is not None and not config_changes(saved, requested, synthetic=synthetic, unset_matches=True)

    def clear(self, *, keep: Iterable[str] = (LOCK_NAME,)) -> None:
        """Delete every entry but ``keep`` (names); links are removed, never followed."""
        if not self.root.is_dir():  # nothing there yet: nothing to clear
            return
        kept = frozenset(keep)
        for entry in self.root.iterdir():
            if entry.name in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # -- the claim -----------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Whether this object holds the folder's lock."""
        return self._lock is not None

    def claim(
        self,
        *,
        resume: Resume = False,
        overwrite: bool = False,
        requested: RunConfig | None = None,
        synthetic: bool = False,
    ) -> RunStart:
        """Take the lock (creating the folder), then :meth:`decide` how the run starts.

        The lock stays held (also when the decision refuses) until :meth:`release` or :meth:`abandon`.

        Raises:
            RunLockedError: another process holds the run.
            ConfigError: the decision refuses (see :meth:`decide`).
        """
        created = not self.root.exists()
        self._lock = RunLock(self.root).acquire()
        self._created = created  # only a process that holds the lock may remove what it made
        return self.decide(resume=resume, overwrite=overwrite, requested=requested, synthetic=synthetic)

    def decide(
        self,
        *,
        resume: Resume = False,
        overwrite: bool = False,
        requested: RunConfig | None = None,
        synthetic: bool = False,
    ) -> RunStart:
        """Check the folder (locked by this process) and prepare it for the run.

        - neither: an empty folder starts a run; one holding anything is refused;
        - ``overwrite``: a run (or an empty folder) is deleted, all but the lock; other files are refused;
        - ``resume=True``: continue from ``last``; a run with no checkpoint starts from the beginning
          (its log and resume records stay: ``restarted``); no run there is refused;
        - ``resume="auto"``: continue when ``last`` exists and the saved config :meth:`matches`
          ``requested``; otherwise everything but the lock is deleted and the run starts over.

        Files whose atomic write was interrupted are removed first (no writer is alive).

        Raises:
            ConfigError: as listed; both ``resume`` and ``overwrite``.
        """
        if resume and overwrite:
            raise ConfigError("give either --resume (continue the run) or --overwrite (start it over), not both")
        for folder in (self.root, self.checkpoint("last").parent):  # the lock is held: no writer is alive
            for partial in remove_partial_writes(folder):
                logger.warning("%s: removed %s, a file whose write was interrupted", folder, partial.name)
        state = self.state
        if resume == "auto":
            return self._continue_or_start_over(requested, synthetic=synthetic)
        if overwrite:
            if state is RunState.FOREIGN:
                raise ConfigError(f"{self.root} holds files but no fusionkit run; --overwrite deletes only runs")
            self.clear()
            return RunStart(saved=None)
        if resume:
            if state in (RunState.EMPTY, RunState.FOREIGN):
                raise ConfigError(f"{self.root}: --resume, but there is no run there (no config.yaml)")
            if self.last.is_file():
                return RunStart(saved=load_run_config(self.config))
            self.clear(keep=SCRATCH | {self.log.name, self.resumes.name})
            return RunStart(saved=None, restarted=True)
        if state is RunState.FOREIGN:
            raise ConfigError(f"{self.root} is not empty and holds no fusionkit run; choose another --out")
        if state is not RunState.EMPTY:
            raise ConfigError(
                f"{self.root} already holds a run; pass --resume to continue it, --overwrite to start it "
                "over, or choose another --out"
            )
        return RunStart(saved=None)

    def _continue_or_start_over(self, requested: RunConfig | None, *, synthetic: bool) -> RunStart:
        saved = self.saved_config()
        same = (
            saved is not None
            and requested is not None
            and not config_changes(saved, requested, synthetic=synthetic, unset_matches=True)
        )
        if same and self.last.is_file():
            return RunStart(saved=saved)
        if self.root.is_dir() and any(p.name != LOCK_NAME for p in self.root.iterdir()):
            why = "its config differs from the requested one" if saved is not None and not same else None
            logger.info("%s: starting over (%s)", self.root, why or "it has no checkpoint to resume")
            self.clear()
        return RunStart(saved=None)

    def release(self) -> None:
        """Let the lock go (safe to call twice, and on a ``RunDir`` that never claimed)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def abandon(self) -> None:
        """Undo a failed start and release: if this claim created the folder and no ``last``
        checkpoint exists, its contents go while the lock is still held (a process waiting for the
        lock never finds its own new run deleted) and the folder after."""
        remove = self.held and self._created and not self.last.is_file()
        if remove:
            for path in self.root.iterdir():
                if path.name == LOCK_NAME:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        self.release()
        if remove:
            with contextlib.suppress(OSError):  # not empty: another process has claimed it since
                self.root.rmdir()


RunFiles = RunDir
"""The former name of :class:`RunDir` (the file names); kept for code that imports it."""


def refuse_escaping_links(folder: str | Path, *, boundary: str | Path | None = None) -> None:
    """Refuse, in one line, a loaded folder holding a symbolic link that leads outside it.

    Loading a run directory or a saved pipeline reads the files in it and evaluating writes beside
    them; a link (to a file or a folder, at any depth) whose target lies outside ``boundary``
    (default: the folder itself) would make either reach elsewhere, so it is refused, naming the
    link and where it leads. Links inside the folder are fine. ``boundary`` is wider for a Hugging
    Face Hub snapshot, whose files are links into the repository's ``blobs/`` folder.

    Raises:
        ConfigError: the link that leads outside (the first found, in sorted order).
    """
    root = Path(folder)
    limit = Path(boundary if boundary is not None else folder).resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath, name)
            if path.is_symlink() and not path.resolve().is_relative_to(limit):
                raise ConfigError(
                    f"{path}: a symbolic link leading outside {root} (to {os.readlink(path)}); a loaded folder "
                    "reads and writes only inside itself: copy the file in instead of linking it"
                )
