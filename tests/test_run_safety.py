"""Run safety (issue 28): the run lock keeps exactly one holder whatever the timing, a killed holder
frees the run directory at once, a refused process deletes nothing, and a kill between the final
checkpoint and its report is recovered by --resume.

The race test runs N worker processes that meet at a barrier and then all try to take the same lock;
each trial must end with exactly one holder. It runs the three starting states a lock file can be
in: absent, left by a dead process (its JSON names a dead pid), and empty (a holder killed before
it wrote its JSON)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fusionkit.errors import RunLockedError
from fusionkit.runtime.lock import LOCK_NAME, RunLock, filesystem_type

WORKERS = 6
TRIALS = 70  # x 3 starting states = 210 trials

HOLDER = """
import sys
from fusionkit.runtime.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def _hold(run: Path) -> subprocess.Popen:
    """A separate process that holds the lock on ``run`` until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _contender(run: str, barrier, results, trials: int) -> None:
    for _ in range(trials):
        barrier.wait()  # the lock file is prepared
        barrier.wait()  # everyone starts together
        lock = RunLock(run)
        try:
            lock.acquire()
            won = True
        except RunLockedError:
            won = False
        barrier.wait()  # every attempt is over while the winner still holds
        results.put(won)
        lock.release()
        barrier.wait()  # released before the next trial is prepared


def test_many_processes_at_once_exactly_one_holder_every_trial(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_contender, args=(str(run), barrier, results, 3 * TRIALS), daemon=True)
        for _ in range(WORKERS)
    ]
    for p in procs:
        p.start()
    dead = _dead_pid()
    holders = []
    for trial in range(3 * TRIALS):
        state = trial % 3
        lock_file = run / LOCK_NAME
        if state == 1:
            lock_file.write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
        elif state == 2:
            lock_file.write_text("")
        barrier.wait(timeout=60)
        barrier.wait(timeout=60)
        barrier.wait(timeout=60)
        holders.append(sum(results.get(timeout=60) for _ in range(WORKERS)))
        barrier.wait(timeout=60)
    for p in procs:
        p.join(timeout=60)
    assert [(t, n) for t, n in enumerate(holders) if n != 1] == []  # (trial, holders) of every failure
    assert len(holders) == 3 * TRIALS >= 200


def test_a_live_holder_is_refused_by_name_and_a_sigkilled_one_frees_the_run_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold(run)
    assert json.loads((run / LOCK_NAME).read_text()) == {"pid": holder.pid, "host": socket.gethostname()}
    with pytest.raises(RunLockedError) as refused:
        RunLock(run).acquire()
    assert str(refused.value) == (
        f"{run}: another process (pid {holder.pid}) is running this run; wait for it to finish or stop it"
    )
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(run) as lock:  # no wait, no takeover guess: the kernel dropped the dead holder's lock
        assert lock.held
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()


def test_a_file_left_behind_is_not_a_holder_and_a_second_lock_in_one_process_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for leftover in ("", "{half", json.dumps({"pid": os.getppid(), "host": socket.gethostname()})):
        (run / LOCK_NAME).write_text(leftover)
        first = RunLock(run).acquire()
        with pytest.raises(RunLockedError, match="is running this run"):
            RunLock(run).acquire()
        with pytest.raises(RunLockedError, match="already holds"):
            first.acquire()
        first.release()
        first.release()  # twice is harmless
        assert not (run / LOCK_NAME).exists()


def test_a_holder_on_another_host_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        (run / LOCK_NAME).write_text(json.dumps({"pid": 77, "host": "node-b"}))  # what a remote holder wrote
        with pytest.raises(RunLockedError, match=r"process 77 on host node-b is running this run"):
            RunLock(run).acquire()
    finally:
        holder.communicate("")


def test_filesystem_type_reads_the_mount_table(tmp_path: Path) -> None:
    kind = filesystem_type(tmp_path)
    mounts = Path("/proc/self/mounts").read_text()
    assert kind is not None and f" {kind} " in mounts
    assert filesystem_type("/proc") == "proc"


def test_a_refused_trainer_never_deletes_the_folder_a_winner_made_meanwhile(tmp_path: Path, monkeypatch) -> None:
    """The race of issue 28: the loser looks (no folder yet), the winner creates the folder and takes
    the lock, the loser is refused. The loser must leave the winner's folder alone; before the fix it
    removed the folder on its failed-start path. The winner is started exactly between the two steps
    by wrapping the lock the trainer takes."""
    from train_helpers import tiny_run_config

    import fusionkit.runtime.rundir as rundir_module
    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import Trainer

    config = RunConfig.model_validate(tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    run = tmp_path / "run"
    holders: list[subprocess.Popen] = []

    class WinnerFirst(RunLock):
        def acquire(self) -> RunLock:
            holders.append(_hold(run))
            (run / "config.yaml").write_text("the winner's file\n")
            return super().acquire()

    monkeypatch.setattr(rundir_module, "RunLock", WinnerFirst)
    try:
        with pytest.raises(RunLockedError, match="is running this run"):
            Trainer(config, run_dir=run, synthetic=True, progress=False)
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", LOCK_NAME]
        assert (run / "config.yaml").read_text() == "the winner's file\n"
    finally:
        for holder in holders:
            holder.communicate("")


def test_a_sweep_never_clears_a_run_folder_that_a_live_process_holds(tmp_path: Path) -> None:
    """Issue 28: a sweep whose job folder holds another config starts it over, but not while a live
    ``train`` holds it: the job fails with the lock's one line and every file of the live run stays."""
    from train_helpers import tiny_run_config, write_config

    from fusionkit.sweep.execute import execute_job
    from fusionkit.sweep.plan import SweepJob

    run = tmp_path / "run"
    holder = _hold(run)
    try:
        write_config(run / "config.yaml", tiny_run_config(tmp_path / "cache", epochs=6))
        (run / "history.json").write_text("[]")
        job = SweepJob(
            preset="ji-adf",
            seed=0,
            fold=None,
            run_dir=str(run),
            data_root=str(tmp_path / "data"),
            config=tiny_run_config(tmp_path / "cache", epochs=1),
        )
        record = execute_job(job)
        assert record["status"] == "failed" and "is running this run" in record["reason"]
        assert {"config.yaml", "history.json", LOCK_NAME} <= {p.name for p in run.iterdir()}
        assert (run / "history.json").read_text() == "[]"
    finally:
        holder.communicate("")


@pytest.mark.trains
def test_a_kill_between_the_final_checkpoint_and_its_report_is_recovered_by_resume(tmp_path: Path) -> None:
    """Issue 28: the last checkpoint is written before the epoch's report (history.json, the train.log
    line). A SIGKILL between the two on the final epoch left both an epoch short after --resume,
    which had no epoch left to report. The state such a kill leaves is made exactly: the finished
    run's history.json and train.log lose their final epoch."""
    from train_helpers import tiny_run_config

    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import train_run

    config = RunConfig.model_validate(tiny_run_config(tmp_path / "cache", epochs=2, n_lesions=40))
    run = tmp_path / "run"
    full = train_run(config, run_dir=run, synthetic=True, progress=False)
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and history == full.history
    (run / "history.json").write_text(json.dumps(history[:1]))
    log = (run / "train.log").read_text().splitlines(keepends=True)
    (run / "train.log").write_text("".join(line for line in log if "epoch 2/2" not in line))

    train_run(config, run_dir=run, synthetic=True, resume=True, progress=False)
    assert json.loads((run / "history.json").read_text()) == history
    recovered = [line for line in (run / "train.log").read_text().splitlines() if "epoch 2/2" in line]
    assert len(recovered) == 1 and recovered[0].endswith("(recovered from the last checkpoint)")


@pytest.mark.trains
@pytest.mark.parametrize("resume", [False, True])
def test_a_kill_while_config_yaml_was_written_is_no_dead_end(tmp_path: Path, resume: bool, caplog) -> None:
    """Issue 28: SIGKILL during the atomic write of config.yaml left only its temporary file, and a
    rerun, --resume and --overwrite all refused the folder. The temporary file is no run: it is
    removed (with a warning) and the run starts."""
    from train_helpers import tiny_run_config

    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import train_run

    run = tmp_path / "run"
    run.mkdir()
    partial = run / ".config.yaml.k2j4x9.tmp"
    partial.write_text("model:\n  name: ji-a")
    config = RunConfig.model_validate(tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    if resume:  # --resume of a folder with no run in it is refused in one line, naming what to do
        with pytest.raises(Exception, match="no run there"):
            train_run(config, run_dir=run, synthetic=True, resume=True, progress=False)
        assert not partial.exists()
        partial.write_text("model:\n  name: ji-a")
    caplog.clear()
    trainer = train_run(config, run_dir=run, synthetic=True, progress=False)
    assert [r["epoch"] for r in trainer.history] == [1]
    assert not partial.exists() and not any(p.name.endswith(".tmp") for p in run.iterdir())
    assert f"{run}: removed .config.yaml.k2j4x9.tmp, a file whose write was interrupted" in caplog.messages


def test_an_empty_validation_split_is_refused_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Issue 28: a split too small for its val_fraction crashed later with a traceback."""
    from train_helpers import tiny_run_config

    from fusionkit.errors import ConfigError
    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import train_run

    raw = tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=1)  # one lesion: its class cannot split
    with pytest.raises(ConfigError) as refused:
        train_run(RunConfig.model_validate(raw), run_dir=tmp_path / "run", synthetic=True, progress=False)
    message = str(refused.value)
    assert "the validation split is empty (1 lesion(s), data.val_fraction 0.2)" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


SIGTERM_DURING = """
import os, signal, sys, threading, time
from pathlib import Path
from fusionkit.cli import main

out = Path(sys.argv[1])

def kill_when_writing():
    while not (out.exists() and any(out.rglob("*.jpg"))):
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=kill_when_writing, daemon=True).start()
sys.argv = ["fusionkit", "synthesize", str(out), "--n-lesions", "400", "--width", "300", "--height", "220"]
main()
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_outside_training_stops_with_one_line_and_status_143(tmp_path: Path) -> None:
    """Issue 28: SIGTERM outside fit() (setup, cache, report, generating data) had no handler: the
    process died with no message. Now it unwinds like Ctrl-C: one line, exit 143, no partial file."""
    out = tmp_path / "milk"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_DURING, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "fusionkit: SIGTERM: stopped outside training (no partial files left); run the command again "
        "(with --resume where a run directory already holds a run)"
    ]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    """Issue 28: "No space left on device" named no file. An atomic write that fails names its
    target, leaves no temporary file and keeps the previous content."""
    import errno

    from fusionkit.utils import io as io_module
    from fusionkit.utils.io import atomic_write_text

    target = tmp_path / "history.json"
    target.write_text("[1]")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    with pytest.raises(OSError) as failed:
        atomic_write_text(target, "[1, 2]")
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_text() == "[1]" and sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]
