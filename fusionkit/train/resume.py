"""What may change when a run resumes, and the record of each resume.

How a run claims its folder (start, resume, start over, refuse) is
:meth:`fusionkit.runtime.rundir.RunDir.claim`; :func:`claim_run_dir` is its decision on a folder
this process has locked:

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
import time
from pathlib import Path

from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.rundir import SCRATCH, RunDir, RunStart, config_changes
from fusionkit.utils.io import atomic_write_text

__all__ = [
    "APPLIED_ON_RESUME",
    "FIXED_BY_COSINE",
    "SCRATCH",
    "RunStart",
    "claim_run_dir",
    "record_resume",
    "resume_changes",
]

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


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> RunStart:
    """Check ``run_dir`` (already locked by this process) and prepare it for the run: :meth:`RunDir.decide`.

    Raises:
        ConfigError: a run is there and neither ``resume`` nor ``overwrite`` was given; ``resume``
            with no run there; ``overwrite`` of a folder that holds something other than a run.
    """
    return RunDir(run_dir).decide(resume=resume, overwrite=overwrite)


def resume_changes(saved: RunConfig, new: RunConfig, *, run_dir: Path, synthetic: bool) -> list[str]:
    """The changed fields of a resumed run as ``"path: old -> new"``, all in :data:`APPLIED_ON_RESUME`.

    Raises:
        ConfigError: the model spec changed, or a field that cannot change mid-run did (named).
    """
    changes = config_changes(saved, new, synthetic=synthetic)
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
    path = RunDir(run_dir).resumes
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
