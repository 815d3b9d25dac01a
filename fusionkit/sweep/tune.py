"""``fusionkit tune``: search config values with Optuna: TPE sampling, median pruning, a resumable study.

Each trial is an ordinary run directory, ``OUT/trials/trial-<k>/`` (``k``: Optuna's trial number),
trained from ``CONFIG`` with the trial's values applied as overrides (``--param`` keys,
:mod:`~fusionkit.sweep.params`). Trials run as sweep workers (``python -m fusionkit.sweep.worker``,
:func:`~fusionkit.sweep.execute.start_worker`): one at a time, one per ``--devices`` entry, or as
submitit jobs. While a trial trains, the tuner reads its ``history.json`` (rewritten after every
epoch) and reports each epoch's validation score to Optuna; when the median pruner says the trial
is worse than the median of the finished trials at that epoch, the worker gets SIGTERM (the trainer
finishes its batch, saves a resumable checkpoint and stops) and the trial is recorded as pruned.
The pruning decision depends only on the scores reported, in epoch order, not on timing.

The study lives in ``OUT/study.db`` (SQLite, ``optuna.storages.RDBStorage``), so running the same
command again continues it: finished trials (complete, pruned, failed) are kept and count towards
``--trials``; a trial that was running when the tuner died is marked failed (it does not count) and
its values are tried again first. ``OUT/trials.csv`` and ``OUT/summary.md`` list the trials (number,
state, score, values); ``OUT/best.yaml`` is the best trial's run config, ready for ``fusionkit train``.

The score of a trial is the best per-epoch validation score (``--metric``: macro Dice or AUC, default
the config's ``train.selection_metric``): the epoch that also chose its checkpoint. Selected on the
same lesions, it is optimistic; ``summary.md`` says so.

Test hook: with ``FUSIONKIT_TEST_KILL_AFTER_TRIAL=K`` set, the tuner kills itself (SIGKILL) right after
starting the next trial once K trials have finished in this process (the resume test's crash).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from fusionkit.errors import ConfigError, ConfigFieldError, require_extra
from fusionkit.runtime.config import load_run_config
from fusionkit.runtime.rundir import RunDir
from fusionkit.sweep.execute import (
    execute_job,
    failed_record,
    one_line,
    read_record,
    start_worker,
    worker_record,
)
from fusionkit.sweep.params import ParamSpec, Scalar, yaml_scalar
from fusionkit.sweep.plan import SweepJob, bind_data_root
from fusionkit.sweep.runner import build_image_caches, prepare_data_root
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import markdown_row, markdown_table

logger = logging.getLogger("fusionkit.sweep")

STUDY_FILE = "study.db"
"""The Optuna study (SQLite) in ``OUT``."""
STUDY_NAME = "fusionkit-tune"
"""The study's name inside ``study.db``."""
KILL_HOOK = "FUSIONKIT_TEST_KILL_AFTER_TRIAL"
"""Environment variable of the resume test's crash (see the module docstring)."""
HISTORY_KEYS: dict[str, str] = {"dice": "val_dice", "auc": "val_auc"}
"""Each ``--metric`` and the per-epoch field of ``history.json`` that holds it."""
METRIC_NAMES: dict[str, str] = {"dice": "macro Dice", "auc": "macro AUC"}


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs: ``trials`` to finish (complete, pruned or failed), the sampler's
    ``seed``, the ``metric`` maximised, the median pruner's ``prune_startup`` (finished trials
    before any is pruned) and ``prune_warmup`` (epochs a trial always trains before it can be
    pruned; 0: from its first epoch), ``prune`` (False: no pruning), ``enqueue`` (values tried first,
    in order), and ``poll_s`` (how often running trials are looked at)."""

    trials: int
    metric: str
    seed: int = 0
    prune_startup: int = 5
    prune_warmup: int = 0
    prune: bool = True
    enqueue: tuple[dict[str, Scalar], ...] = ()
    poll_s: float = 0.5


# -- running trials ---------------------------------------------------------------------------------
class TrialHandle(Protocol):
    """A trial's training, wherever it runs."""

    def done(self) -> bool:
        """Whether it has ended (finished, failed or stopped)."""

    def stop(self) -> None:
        """Ask it to stop (a pruned trial): the trainer saves a resumable checkpoint and exits."""

    def record(self) -> dict[str, Any]:
        """Its sweep record (``status``, ``reason``, ...) once :meth:`done`."""


class Launcher(Protocol):
    """Starts trials: at most ``slots`` at a time."""

    slots: int

    def start(self, job: SweepJob, slot: int) -> TrialHandle:
        """Start ``job`` in free slot ``slot`` (0 to ``slots - 1``)."""


@dataclass
class _WorkerTrial:
    job: SweepJob
    proc: Any
    log_dir: Path

    def done(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def record(self) -> dict[str, Any]:
        return worker_record(self.job, self.proc.wait(), self.log_dir)


@dataclass
class LocalLauncher:
    """One worker process per trial: one at a time (``devices=None``: this machine's devices) or one
    per device (``CUDA_VISIBLE_DEVICES``; ``cpu`` hides the GPUs). Logs go to ``log_dir``."""

    log_dir: Path
    devices: list[str] | None = None
    slots: int = field(init=False)

    def __post_init__(self) -> None:
        self.slots = len(self.devices) if self.devices else 1

    def start(self, job: SweepJob, slot: int) -> TrialHandle:
        """Start the worker of ``job`` on device ``slot``."""
        device = self.devices[slot] if self.devices else None
        return _WorkerTrial(job, start_worker(job, device, self.log_dir), self.log_dir)


@dataclass
class _SubmititTrial:
    job: SweepJob
    sjob: Any

    def done(self) -> bool:
        return bool(self.sjob.done())

    def stop(self) -> None:
        self.sjob.cancel(check=False)

    def record(self) -> dict[str, Any]:
        try:
            return dict(self.sjob.result())
        except Exception as exc:  # noqa: BLE001 - the job died (cancelled, timed out, killed)
            return read_record(self.job.run_dir) or failed_record(self.job, one_line(exc))


@dataclass
class SubmititLauncher:
    """Each trial a SLURM job through ``submitit.AutoExecutor`` (``cluster="local"``: local
    processes), ``parallel`` at a time. Needs the ``cluster`` extra."""

    folder: Path
    cluster: str | None = None
    partition: str | None = None
    timeout_min: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    parallel: int = 1
    slots: int = field(init=False)

    def __post_init__(self) -> None:
        submitit = require_extra("submitit", what="--launcher submitit")
        self.slots = self.parallel
        self._executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "gpus_per_node": self.gpus_per_job,
            "cpus_per_task": self.cpus_per_job,
            "name": "fusionkit-tune",
        }
        if self.partition:
            params["slurm_partition"] = self.partition
        self._executor.update_parameters(**params)

    def start(self, job: SweepJob, slot: int) -> TrialHandle:  # noqa: ARG002 - SLURM places the job
        """Submit ``job``."""
        (Path(job.run_dir) / "sweep_run.json").unlink(missing_ok=True)
        return _SubmititTrial(job, self._executor.submit(execute_job, job))


# -- the study --------------------------------------------------------------------------------------
def epoch_scores(run_dir: str | Path, metric: str) -> list[float]:
    """The per-epoch validation ``metric`` of a run so far (its ``history.json``; [] before the first epoch)."""
    try:
        history = json.loads(RunDir(run_dir).history.read_text())
    except (OSError, ValueError):
        return []
    return [float(h[HISTORY_KEYS[metric]]) for h in history]


def _counted(trial: Any, states: Any) -> bool:
    """Complete, pruned, or failed with a reason (a trial cut short by a crash does not count)."""
    return trial.state in (states.COMPLETE, states.PRUNED) or (
        trial.state == states.FAIL and "reason" in trial.user_attrs
    )


@dataclass
class _Running:
    trial: Any
    job: SweepJob
    handle: TrialHandle
    reported: int = 0
    pruned_at: int | None = None


class Tuner:
    """The search loop over one study in ``out``; see the module docstring. Build it, then :meth:`run`."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        params: list[ParamSpec],
        settings: TuneSettings,
        out: Path,
        data_root: Path | None = None,
        synthetic: bool = False,
        sets: list[str] | None = None,
        launcher: Launcher | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.optuna = require_extra("optuna", what="fusionkit tune")
        if settings.trials < 1:
            raise ConfigError(f"--trials {settings.trials}: need at least one trial")
        if settings.metric not in HISTORY_KEYS:
            raise ConfigError(
                f"--metric {settings.metric!r}: tune reads the per-epoch validation score from history.json, "
                f"which holds {' and '.join(HISTORY_KEYS)}; pass --metric dice or --metric auc"
            )
        self.config_path = Path(config_path)
        self.params = params
        self.settings = settings
        self.out = Path(out)
        self.sets = list(sets or [])
        self.echo = echo
        self.launcher = launcher or LocalLauncher(log_dir=self.out / "logs")
        self.base = self._job("base", [])
        for spec in params:  # each key must be a config path whose values validate
            example = spec.choices[0] if spec.kind == "cat" else spec.low
            if spec.kind == "int" and example is not None:
                example = int(example)
            try:
                load_run_config(self.config_path, [*self.sets, spec.override(example)])
            except (ConfigError, ValidationError) as exc:
                raise ConfigError(f"--param {spec.text!r}: {_short(exc)}") from None
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_root = prepare_data_root([self.base], out=self.out, data_root=data_root, synthetic=synthetic)
        self.synthetic = synthetic
        self.base = bind_data_root([self.base], self.data_root)[0]

    def _job(self, name: str, overrides: list[str]) -> SweepJob:
        """The job of ``CONFIG`` with ``--set`` and ``overrides`` in ``OUT/trials/<name>`` (unbound to the data)."""
        config = load_run_config(self.config_path, [*self.sets, *overrides])
        return SweepJob(
            preset=name,
            seed=config.train.seed,
            fold=None,
            run_dir=str(self.out / "trials" / name),
            data_root="",
            config=config.model_dump(mode="json"),
        )

    # -- study setup ---------------------------------------------------------------------------------
    def _open_study(self) -> Any:
        optuna = self.optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{(self.out / STUDY_FILE).resolve()}")
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize", load_if_exists=True)
        identity = {
            "config": self.base.config,
            "params": [p.text for p in self.params],
            "metric": self.settings.metric,
        }
        saved = study.user_attrs.get("fusionkit")
        if saved is None:
            study.set_user_attr("fusionkit", json.loads(json.dumps(identity)))
        elif saved != json.loads(json.dumps(identity)):
            what = [k for k in identity if saved.get(k) != json.loads(json.dumps(identity[k]))]
            raise ConfigError(
                f"{self.out / STUDY_FILE}: holds a study of another {' and '.join(what)} "
                "(run the same command to continue it, or pass another --out)"
            )
        sampler_kw: dict[str, Any] = {"seed": self.settings.seed + len(study.trials)}  # resumed: fresh draws
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.launcher.slots > 1:
                sampler_kw["constant_liar"] = True  # parallel trials: do not sample beside a running one
            sampler = optuna.samplers.TPESampler(**sampler_kw)
        pruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=self.settings.prune_startup,
                n_warmup_steps=self.settings.prune_warmup + 1,  # steps are epochs (1-based): step < this is warmup
            )
            if self.settings.prune
            else optuna.pruners.NopPruner()
        )
        return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner)

    def _recover(self, study: Any) -> None:
        """Trials left running by a tuner that died: failed (not counted), their values tried again."""
        states = self.optuna.trial.TrialState
        for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            study.tell(t.number, state=states.FAIL)
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            self.echo(f"trial {t.number}: was running when the search stopped; marked failed, its values go again")

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run trials until ``settings.trials`` have finished; write the outputs; return the summary."""
        from fusionkit.runtime.lock import RunLock

        with RunLock(self.out):  # one tuner per folder: a second one is refused in one line
            study = self._open_study()
            self._recover(study)
            for values in self.settings.enqueue:
                study.enqueue_trial(values, skip_if_exists=True)
            build_image_caches([self.base], self.data_root)
            try:
                self._loop(study)
            finally:
                summary = write_outputs(self, study)
        return summary

    def _loop(self, study: Any) -> None:
        states = self.optuna.trial.TrialState
        running: dict[int, _Running] = {}
        free = list(range(self.launcher.slots))
        finished_here = 0
        kill_after = os.environ.get(KILL_HOOK)
        try:
            while True:
                counted = sum(_counted(t, states) for t in study.get_trials(deepcopy=False))
                while free and counted + len(running) < self.settings.trials:
                    slot = free.pop(0)
                    started = self._start(study, slot)
                    if started is None:  # its config did not validate: a failed trial
                        free.insert(0, slot)
                        counted += 1
                        continue
                    running[slot] = started
                    if kill_after is not None and finished_here >= int(kill_after):
                        os.kill(os.getpid(), signal.SIGKILL)
                if not running:
                    return
                for slot, item in list(running.items()):
                    self._report(item)
                    if item.handle.done():
                        self._report(item)  # the epochs written since the last look
                        self._finish(study, item)
                        del running[slot]
                        free.append(slot)
                        finished_here += 1
                time.sleep(self.settings.poll_s)
        except BaseException:
            for item in running.values():  # Ctrl-C, or a bug: stop the workers, free the trials
                item.handle.stop()
            for item in running.values():
                while not item.handle.done():
                    time.sleep(0.2)
                study.tell(item.trial, state=states.FAIL)  # no reason: tried again when resumed
            raise

    def _start(self, study: Any, slot: int) -> _Running | None:
        trial = study.ask()
        values = {p.key: p.suggest(trial) for p in self.params}
        shown = ", ".join(f"{k}={yaml_scalar(v)}" for k, v in values.items())
        try:
            job = self._job(f"trial-{trial.number}", [p.override(values[p.key]) for p in self.params])
            job = bind_data_root([job], self.data_root)[0]
        except (ConfigError, ValidationError) as exc:
            reason = f"config: {_short(exc)}"
            trial.set_user_attr("reason", reason)
            study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            self.echo(f"trial {trial.number} ({shown}): failed: {reason}")
            return None
        trial.set_user_attr("run_dir", str(Path(job.run_dir).relative_to(self.out)))
        self.echo(f"trial {trial.number} start: {shown}")
        return _Running(trial=trial, job=job, handle=self.launcher.start(job, slot))

    def _report(self, item: _Running) -> None:
        """Report the epochs not yet reported, in order; the first that the pruner rejects stops the run."""
        if item.pruned_at is not None:
            return
        scores = epoch_scores(item.job.run_dir, self.settings.metric)
        for epoch in range(item.reported + 1, len(scores) + 1):
            item.trial.report(scores[epoch - 1], step=epoch)
            item.reported = epoch
            if item.trial.should_prune():
                item.pruned_at = epoch
                item.handle.stop()
                return

    def _finish(self, study: Any, item: _Running) -> None:
        states = self.optuna.trial.TrialState
        record = item.handle.record()
        metric = METRIC_NAMES[self.settings.metric]
        n = item.trial.number
        if item.pruned_at is not None:
            study.tell(item.trial, state=states.PRUNED)
            self.echo(f"trial {n} pruned at epoch {item.pruned_at} (below the median of the finished trials)")
            return
        scores = epoch_scores(item.job.run_dir, self.settings.metric)
        if record.get("status") == "ok" and scores:
            value = max(scores)
            study.tell(item.trial, value)
            self.echo(f"trial {n} complete: val {metric} {value:.4f} (best so far: {study.best_value:.4f})")
            return
        reason = record.get("reason") or f"status {record.get('status')}"
        item.trial.set_user_attr("reason", reason)
        study.tell(item.trial, state=states.FAIL)
        self.echo(f"trial {n} failed: {reason}")


def _short(exc: BaseException) -> str:
    if isinstance(exc, ValidationError | ConfigFieldError):  # the fields, without the config file's name
        parts = [f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()]
        return "; ".join(parts)
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# -- outputs ----------------------------------------------------------------------------------------
def trial_rows(study: Any, params: list[ParamSpec]) -> list[dict[str, Any]]:
    """One row per trial: number, state, score, epochs reported, each parameter, run dir, note."""
    retried = {t.user_attrs["retry_of"]: t.number for t in study.trials if "retry_of" in t.user_attrs}
    rows = []
    for t in study.trials:
        if t.state.name == "WAITING":
            continue
        note = t.user_attrs.get("reason", "")
        if t.state.name == "FAIL" and not note:
            note = "stopped with the search" + (
                f"; retried as trial {retried[t.number]}" if t.number in retried else ""
            )
        if t.state.name == "PRUNED" and t.intermediate_values:
            note = f"pruned at epoch {max(t.intermediate_values)}"
        if "retry_of" in t.user_attrs:
            note = f"retry of trial {t.user_attrs['retry_of']}" + (f"; {note}" if note else "")
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "score": t.value if t.state.name == "COMPLETE" else None,
                "epochs": len(t.intermediate_values),
                **{p.key: t.params.get(p.key) for p in params},
                "run_dir": t.user_attrs.get("run_dir", ""),
                "note": note,
            }
        )
    return rows


def _fmt(value: Any, *, score: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if score else f"{value:.4g}"
    return str(value)


def write_outputs(tuner: Tuner, study: Any) -> dict[str, Any]:
    """``trials.csv``, ``summary.md`` and (once a trial completed) ``best.yaml`` in ``tuner.out``."""
    out, params, settings = tuner.out, tuner.params, tuner.settings
    rows = trial_rows(study, params)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["trial", "state", "score", "epochs", *(p.key for p in params), "run_dir", "note"]
    )
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    atomic_write_text(out / "trials.csv", buf.getvalue())
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    metric = METRIC_NAMES[settings.metric]
    if best is not None:
        overrides = [p.override(best.params[p.key]) for p in params if p.key in best.params]
        if not tuner.synthetic:
            overrides.append(f"data.root={yaml_scalar(str(tuner.data_root))}")
        config = load_run_config(tuner.config_path, [*tuner.sets, *overrides])
        header = (
            f"# fusionkit tune: best of {len(complete)} complete trials in {out}: trial {best.number}, "
            f"val {metric} {best.value:.4f}\n"
            f"# {', '.join(f'{k}={yaml_scalar(v)}' for k, v in best.params.items())}\n"
        )
        atomic_write_text(out / "best.yaml", header + config.to_yaml())
    states = tuner.optuna.trial.TrialState
    n = {s: sum(t.state == getattr(states, s) for t in study.trials) for s in ("COMPLETE", "PRUNED")}
    failed = sum(t.state == states.FAIL and "reason" in t.user_attrs for t in study.trials)
    stopped = sum(t.state == states.FAIL and "reason" not in t.user_attrs for t in study.trials)
    lines = [
        f"# Tune: {tuner.config_path.name}",
        "",
        f"{n['COMPLETE'] + n['PRUNED'] + failed} of {settings.trials} trials finished ({n['COMPLETE']} complete, "
        f"{n['PRUNED']} pruned, {failed} failed)"
        + (f"; {stopped} stopped with the search and run again" if stopped else "")
        + f". Score: the best per-epoch validation {metric} of each trial. "
        f"Sampler: TPE (seed {settings.seed}); pruner: "
        + (
            f"median (after {settings.prune_startup} complete trials, from epoch {settings.prune_warmup + 1})."
            if settings.prune
            else "none."
        ),
        "",
    ]
    if best is not None:
        lines += [
            f"**Best: trial {best.number}**, val {metric} {best.value:.4f}: "
            + ", ".join(f"`{k}={yaml_scalar(v)}`" for k, v in best.params.items())
            + f" (config: `best.yaml`; run: `{best.user_attrs.get('run_dir', '')}`).",
            "",
            "This score chose the trial and each trial's checkpoint on the same validation lesions, so it is "
            "optimistic: confirm the best config on lesions no selection saw (a held-out test part or a "
            "new split) and over several seeds (`fusionkit sweep`) before reporting it.",
            "",
        ]
    else:
        lines += ["No trial completed yet: no best config.", ""]
    keys = [p.key for p in params]
    lines += markdown_table(["trial", "state", "score", "epochs", *keys, "note"], [], align="rlrr")
    for r in rows:
        cells = [
            str(r["trial"]),
            r["state"],
            _fmt(r["score"], score=True),
            str(r["epochs"]),
            *(_fmt(r[k]) for k in keys),
            r["note"],
        ]
        lines.append(markdown_row(cells))
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    return {
        "trials": rows,
        "best": None if best is None else {"trial": best.number, "score": best.value, "params": dict(best.params)},
    }
