"""Running one sweep job, and the engines that run many: in-process, a local GPU queue, submitit.

Each job's run directory is an ordinary fusionkit run (``fusionkit evaluate/predict`` read it) plus
``sweep_run.json``: status (``ok``, ``failed`` with a one-line reason, ``interrupted``), seconds,
best epoch, samples/s, peak GPU memory, device, torch/timm versions, the macro metrics, and the
validation labels (for the summary's bootstrap and tests). A run is *finished* when its report exists, its
record says ``ok`` and its resolved config equals the requested one; an unfinished run with a
``last`` checkpoint and the requested config is resumed; anything else in its folder is cleared
(the trainer's claim with ``resume="auto"``: :meth:`fusionkit.runtime.rundir.RunDir.claim`).
The queue and the cluster scheduling are ``concurrent.futures`` and ``submitit``: none of our own.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from fusionkit.sweep.plan import SweepJob
from fusionkit.utils.io import atomic_write_text

logger = logging.getLogger("fusionkit.sweep")

RECORD_FILE = "sweep_run.json"
"""The sweep's record in each run directory."""
MACRO_KEYS: tuple[str, ...] = ("auc", "ppv", "accuracy", "sensitivity", "specificity", "dice")
"""The paper's Table 2-3 columns (AUC, Precision = PPV, Accuracy, Sensitivity, Specificity, Dice)."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (what a failed run records)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``sweep_run.json``, or None."""
    path = Path(run_dir) / RECORD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(job: SweepJob) -> bool:
    """Trained and evaluated (:attr:`RunState.FINISHED <fusionkit.runtime.rundir.RunState.FINISHED>`),
    record ``ok``, saved config the requested one (:meth:`RunDir.matches <fusionkit.runtime.rundir.RunDir.matches>`)."""
    from fusionkit.runtime.rundir import RunDir, RunState

    run = RunDir(job.run_dir)
    record = read_record(run.root)
    return (
        run.state is RunState.FINISHED
        and record is not None
        and record.get("status") == "ok"
        and run.matches(job.run_config())
    )


def _versions() -> dict[str, str]:
    import timm
    import torch

    return {"torch": torch.__version__, "timm": timm.__version__}


def execute_job(job: SweepJob, *, progress: bool = False, gradcam_lesions: int = 0) -> dict[str, Any]:
    """Train (or resume) and evaluate one job in this process; writes and returns its record.

    Any exception becomes a ``failed`` record with its one-line reason; ``KeyboardInterrupt``
    (the trainer has saved a resumable checkpoint) is recorded as ``interrupted`` and re-raised.
    """
    import torch

    from fusionkit.evaluate import train_and_evaluate

    run_dir = Path(job.run_dir)
    record: dict[str, Any] = {
        "preset": job.preset,
        "seed": job.seed,
        "fold": job.fold,
        "run_dir": str(run_dir),
        "status": "failed",
        "reason": None,
        "seconds": None,
        "best_epoch": None,
        "samples_per_s": None,
        "peak_gpu_mem_gib": None,
        "device": None,
        **_versions(),
        "metrics": None,
        "decision": None,
        "config": job.config,
    }
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer = train_and_evaluate(  # resume="auto": continue the job's run, or start it over
            job.run_config(),
            run_dir=run_dir,
            data_root=job.data_root,
            resume="auto",
            progress=progress,
            gradcam_lesions=gradcam_lesions,
        )
        device = trainer.device
        record["device"] = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        record.update(_outcome(run_dir))
        record["status"] = "ok"
    except KeyboardInterrupt:
        record.update(status="interrupted", reason="interrupted (Ctrl-C); resumable from its last checkpoint")
        raise
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        record["reason"] = one_line(exc)
        logger.warning("%s failed: %s", job.label, record["reason"])
    finally:
        record["seconds"] = round(time.perf_counter() - started, 3)
        if cuda:
            record["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        atomic_write_text(run_dir / RECORD_FILE, json.dumps(record, indent=1))
    return record


def _outcome(run_dir: Path) -> dict[str, Any]:
    """Best epoch, mean samples/s, macro metrics (the run's metrics.json, written through the
    run's :class:`~fusionkit.inference.pipeline.FusionPipeline`), the decision rule the run stored,
    ``reported_split`` (``test`` when the run holds out a test part: its metrics and posteriors are on
    it; else ``validation``, the selection split) and the labels of the validation and test lesions."""
    from fusionkit.data import CLASS_NAMES, find_split, lesion_labels
    from fusionkit.runtime.rundir import RunDir

    run = RunDir(run_dir)
    history = json.loads(run.history.read_text())
    best = [h["epoch"] for h in history if h.get("best")]
    metrics = json.loads(run.metrics.read_text())
    macro = metrics["metrics"]["macro"]
    split = json.loads(run.split.read_text())
    ids, labels = lesion_labels(find_split(split["root"], "Training"))
    label_of = dict(zip(ids, labels, strict=True))
    evaluated = run.evaluated
    reported = json.loads(evaluated.read_text())["split"] if evaluated.is_file() else "validation"
    return {
        "best_epoch": best[-1] if best else None,
        "samples_per_s": sum(h["samples_per_s"] for h in history) / len(history) if history else None,
        "metrics": {k: macro[k] for k in MACRO_KEYS},
        "reported_split": reported,
        "val_labels": {lesion: CLASS_NAMES[label_of[lesion]] for lesion in split["val"]},
        "test_labels": {lesion: CLASS_NAMES[label_of[lesion]] for lesion in split.get("test") or []},
        "decision": _stored_decision(run.inference),
    }


def _stored_decision(path: Path) -> dict[str, Any] | None:
    """The stored decision rule in short: its rule, thresholds and the classes whose threshold was fitted."""
    from fusionkit.inference.decision import DecisionRecord

    if not path.is_file():
        return None
    record = DecisionRecord.from_dict(json.loads(path.read_text())["decision"])
    names = record.class_names
    return {
        "rule": record.rule,
        "thresholds": None if record.thresholds is None else dict(zip(names, record.thresholds, strict=True)),
        "fitted": [c for c, fitted in zip(names, record.fitted or (), strict=True) if fitted],
    }


# -- engines ----------------------------------------------------------------------------------------
OnStart = Callable[[SweepJob], None]
Engine = Callable[[list[SweepJob], OnStart], Iterator[dict[str, Any]]]
"""Takes the jobs to run and a callback called as each starts; yields each one's record as it
finishes (in any order)."""


def in_process(*, progress: bool = False) -> Engine:
    """Run jobs one after the other in this process (imports, the model zoo and the mmapped
    image cache stay warm between runs)."""

    def run(jobs: list[SweepJob], on_start: OnStart) -> Iterator[dict[str, Any]]:
        for job in jobs:
            on_start(job)
            yield execute_job(job, progress=progress)

    return run


def failed_record(job: SweepJob, reason: str) -> dict[str, Any]:
    """The record of a job whose worker died before writing its own."""
    return {
        "preset": job.preset,
        "seed": job.seed,
        "fold": job.fold,
        "run_dir": job.run_dir,
        "status": "failed",
        "reason": reason,
        "seconds": None,
        "metrics": None,
    }


def _parent_death_signal() -> Callable[[], object] | None:
    """Linux: what makes a child get SIGTERM (save its checkpoint, stop) when its parent dies.

    Resolved here, in the parent: between fork and exec the child only calls it (no imports, which
    could wait on a lock another thread held at the fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    return lambda: prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM


def start_worker(job: SweepJob, device: str | None, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m fusionkit.sweep.worker`` on ``job`` (``CUDA_VISIBLE_DEVICES=device``; ``cpu``
    hides the GPUs; None keeps this process's devices); its output goes to ``log_dir/<slug>.log``.

    The worker writes the job's record into its run directory (:func:`worker_record` reads it); on
    Linux it is stopped (SIGTERM) when this process dies."""
    log_dir.mkdir(parents=True, exist_ok=True)
    job_file = log_dir / f"{job.slug}.json"
    atomic_write_text(job_file, job.to_json())
    (Path(job.run_dir) / RECORD_FILE).unlink(missing_ok=True)  # the record read later is this run's
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device
    with open(job_file.with_suffix(".log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "fusionkit.sweep.worker", str(job_file)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_parent_death_signal(),
        )


def worker_record(job: SweepJob, returncode: int, log_dir: Path) -> dict[str, Any]:
    """The record a finished worker left, or a ``failed`` one with the last line of its log."""
    record = read_record(job.run_dir)
    if record is not None:
        return record
    log = log_dir / f"{job.slug}.log"
    tail = log.read_text().strip().splitlines() if log.is_file() else []
    return failed_record(job, f"worker exited with status {returncode}: {tail[-1] if tail else ''}")


def _subprocess_job(job: SweepJob, device: str, log_dir: Path) -> dict[str, Any]:
    proc = start_worker(job, device, log_dir)
    returncode = proc.wait()
    if returncode == 130:
        raise KeyboardInterrupt
    return worker_record(job, returncode, log_dir)


def device_queue(devices: Iterable[str], *, log_dir: Path) -> Engine:
    """One subprocess per device at a time (``CUDA_VISIBLE_DEVICES=<device>``; ``cpu`` hides the
    GPUs), fed from a queue by a thread pool; the workers' output goes to ``log_dir``."""
    devices = list(devices)

    def run(jobs: list[SweepJob], on_start: OnStart) -> Iterator[dict[str, Any]]:
        free: queue.Queue[str] = queue.Queue()
        for d in devices:
            free.put(d)

        def task(job: SweepJob) -> dict[str, Any]:
            device = free.get()
            on_start(job)
            try:
                return _subprocess_job(job, device, log_dir)
            finally:
                free.put(device)

        with ThreadPoolExecutor(max_workers=len(devices)) as pool:
            futures = [pool.submit(task, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    return run


def submitit_engine(
    *,
    folder: Path,
    cluster: str | None = None,
    partition: str | None = None,
    timeout_min: int = 240,
    gpus_per_job: int = 1,
    cpus_per_job: int = 8,
) -> Engine:
    """Each job becomes a SLURM job through ``submitit.AutoExecutor`` (``cluster="local"``: local
    processes, as in the tests). Needs the ``cluster`` extra (``pip install 'jiadf-fusion[cluster]'``)."""
    from fusionkit.errors import require_extra

    submitit = require_extra("submitit", what="--launcher submitit")

    def run(jobs: list[SweepJob], on_start: OnStart) -> Iterator[dict[str, Any]]:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        params: dict[str, Any] = {
            "timeout_min": timeout_min,
            "gpus_per_node": gpus_per_job,
            "cpus_per_task": cpus_per_job,
            "name": "fusionkit-sweep",
        }
        if partition:
            params["slurm_partition"] = partition
        executor.update_parameters(**params)
        pending = []
        for job in jobs:
            pending.append((executor.submit(execute_job, job), job))
            on_start(job)
        while pending:
            for item in list(pending):
                sjob, job = item
                if sjob.done():
                    pending.remove(item)
                    try:
                        yield sjob.result()
                    except Exception as exc:  # noqa: BLE001 - the job itself died (killed, timed out)
                        yield read_record(job.run_dir) or failed_record(job, one_line(exc))
            time.sleep(0.5)

    return run
