"""The run-directory lifecycle: start, resume, start over; what may change when a run resumes.

- A new run needs an empty (or absent) directory; one holding a run is refused unless ``resume``
  (continue it) or ``overwrite`` (delete it and start over) is given.
- ``resume`` continues from ``checkpoints/last.safetensors``; when the run stopped before its
  first checkpoint there is nothing to continue, and the run starts from the beginning (logged).
- On resume, the fields in :data:`APPLIED_ON_RESUME` may change and take effect from the resumed
  batch (``train.lr``: every param group's lr is set as the new config gives it, and the plateau
  schedule reduces from there); any other changed field is refused with a line naming it (under a
  cosine schedule also :data:`FIXED_BY_COSINE`). ``config.yaml`` is rewritten with what now runs and
  ``resumes.json`` records each resume (when, where, what changed).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig, load_run_config
from fusionkit.runtime.lock import LOCK_NAME
from fusionkit.runtime.rundir import RunFiles
from fusionkit.utils.io import atomic_write_text, remove_partial_writes

logger = logging.getLogger("fusionkit.train")

APPLIED_ON_RESUME = frozenset(
    {
        "train.epochs",
        "train.lr",
        "train.max_batches_per_epoch",
        "train.eval_batch_size",
        "train.device",
        "train.precision",
        "train.channels_last",
        "train.step_mode",
        "train.compile_mode",
        "train.grad_clip",
        "train.deterministic",
        "train.tracking",
        "data.root",
        "data.num_workers",
        "data.cache",
        "data.cache_dir",
    }
)
"""Fields a resumed run may change (dotted paths): they are read afresh when the run resumes.

With ``train.scheduler.kind: cosine`` the schedule's length and base lrs are fixed at the start
(:data:`FIXED_BY_COSINE` are refused on resume).
"""

FIXED_BY_COSINE = frozenset({"train.epochs", "train.lr", "train.max_batches_per_epoch"})
"""Fields that set a cosine schedule's length or base lrs, so they cannot change mid-run."""

SCRATCH = frozenset({LOCK_NAME, "synthetic"})
"""Names in a run directory that do not make it a run (the lock; the generated data set)."""


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


def _clear(run_dir: Path, keep: frozenset[str]) -> None:
    if not run_dir.is_dir():  # nothing there yet: nothing to clear
        return
    for entry in run_dir.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> RunStart:
    """Check ``run_dir`` (already locked by this process) and prepare it for the run.

    Raises:
        ConfigError: a run is there and neither ``resume`` nor ``overwrite`` was given; ``resume``
            with no run there; ``overwrite`` of a folder that holds something other than a run.
    """
    files = RunFiles(run_dir)
    if resume and overwrite:
        raise ConfigError("give either --resume (continue the run) or --overwrite (start it over), not both")
    for folder in (run_dir, files.checkpoint("last").parent):  # we hold the lock: no writer is alive
        for partial in remove_partial_writes(folder):
            logger.warning("%s: removed %s, a file whose write was interrupted", folder, partial.name)
    others = sorted(p.name for p in run_dir.iterdir() if p.name not in SCRATCH) if run_dir.is_dir() else []
    is_run = files.config.is_file()
    if overwrite:
        if others and not is_run:
            raise ConfigError(f"{run_dir} holds files but no fusionkit run; --overwrite deletes only runs")
        _clear(run_dir, keep=frozenset({LOCK_NAME}))
        return RunStart(saved=None)
    if resume:
        if not is_run:
            raise ConfigError(f"{run_dir}: --resume, but there is no run there (no config.yaml)")
        if files.checkpoint("last").is_file():
            return RunStart(saved=load_run_config(files.config))
        _clear(run_dir, keep=SCRATCH | {files.log.name, files.resumes.name})
        return RunStart(saved=None, restarted=True)
    if is_run:
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start it "
            "over, or choose another --out"
        )
    if others:
        raise ConfigError(f"{run_dir} is not empty and holds no fusionkit run; choose another --out")
    return RunStart(saved=None)


def _diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if a == b else [(path, a, b)]


def resume_changes(saved: RunConfig, new: RunConfig, *, run_dir: Path, synthetic: bool) -> list[str]:
    """The changed fields of a resumed run as ``"path: old -> new"``, all in :data:`APPLIED_ON_RESUME`.

    Raises:
        ConfigError: the model spec changed, or a field that cannot change mid-run did (named).
    """
    old, cur = saved.model_dump(mode="json"), new.model_dump(mode="json")
    if not synthetic:  # the generated set's settings matter only with --synthetic
        for dump in (old, cur):
            dump["data"].pop("synthetic", None)
    changes = _diff(old, cur)
    model = [f"{p[len('model.') :]}: {a!r} -> {b!r}" for p, a, b in changes if p.startswith("model.")]
    if model:
        raise ConfigError(
            f"{run_dir}: --resume with a different model spec ({'; '.join(model[:3])}); "
            "resume with the run's own config or start a new --out"
        )
    applied = APPLIED_ON_RESUME
    if saved.train.scheduler.kind == "cosine":
        applied = applied - FIXED_BY_COSINE
    refused = [f"{p} ({a!r} -> {b!r})" for p, a, b in changes if p not in applied]
    if refused:
        raise ConfigError(
            f"{run_dir}: --resume cannot change {', '.join(refused)}; resume with the run's own "
            f"value or start a new --out (changeable on resume: {', '.join(sorted(applied))})"
        )
    return [f"{p}: {a!r} -> {b!r}" for p, a, b in changes]


def record_resume(run_dir: Path, *, epoch: int, batch: int, changes: list[str], restarted: bool) -> None:
    """Append one record to ``resumes.json`` (time, where the run continued, what changed)."""
    path = RunFiles(run_dir).resumes
    records = json.loads(path.read_text()) if path.is_file() else []
    records.append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "from_epoch": epoch + 1,
            "from_batch": batch,
            "restarted_from_beginning": restarted,
            "changes": changes,
        }
    )
    atomic_write_text(path, json.dumps(records, indent=2) + "\n")
