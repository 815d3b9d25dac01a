"""``fusionkit tune``: the ``--param`` specs, the search loop on scripted scores, and a real study
through the entry point that is killed, resumed, and prunes a trial scripted to be bad."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from train_helpers import tiny_run_config, write_config

from fusionkit.errors import ConfigError
from fusionkit.presets import parse_override
from fusionkit.runtime.config import load_run_config
from fusionkit.sweep.params import parse_enqueued, parse_param, parse_params, yaml_scalar

optuna = pytest.importorskip("optuna")  # the tune extra (in dev): without it, the one-line test below

from fusionkit.sweep.tune import KILL_HOOK, Tuner, TuneSettings  # noqa: E402

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
}


def tune_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``fusionkit tune ARGS`` in a subprocess (the real entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", "tune", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
        check=False,
    )


# -- --param specs ----------------------------------------------------------------------------------
def test_the_issue_examples_parse():
    lr, wd, heads, sampler = parse_params(
        [
            "train.lr=log:1e-5:1e-3",
            "train.weight_decay=float:0:0.1",
            "model.fusion.attention_heads=int:4:8",
            "train.sampler=cat:shuffle,balanced",
        ]
    )
    assert (lr.key, lr.kind, lr.low, lr.high) == ("train.lr", "log", 1e-5, 1e-3)
    assert (wd.kind, wd.low, wd.high, wd.step) == ("float", 0.0, 0.1, None)
    assert (heads.kind, heads.low, heads.high) == ("int", 4, 8)
    assert sampler.choices == ("shuffle", "balanced")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("train.lr", "expected KEY=KIND:ARGS"),
        ("=log:1e-5:1e-3", "expected KEY=KIND:ARGS"),
        ("train..lr=log:1e-5:1e-3", "not a dotted config path"),
        ("train.lr=exp:1:2", "KIND one of log, float, int, cat"),
        ("train.lr=log:1e-5", "expected log:LOW:HIGH"),
        ("train.lr=log:1e-5:1e-3:1e-4", "expected log:LOW:HIGH"),
        ("train.lr=log:0:1e-3", "LOW > 0"),
        ("train.lr=log:x:1e-3", "LOW 'x' is not a number"),
        ("train.lr=float:1:nan", "must be finite"),
        ("train.lr=float:0.1:0.1", "LOW < HIGH"),
        ("train.weight_decay=float:0:0.1:0.5", "STEP must be > 0"),
        ("model.fusion.attention_heads=int:4.5:8", "must be an integer"),
        ("train.sampler=cat:shuffle", "at least two choices"),
        ("train.sampler=cat:shuffle,,balanced", "an empty choice"),
        ("train.sampler=cat:shuffle,shuffle", "listed twice"),
    ],
)
def test_a_bad_param_is_one_line_naming_it(text, says):
    with pytest.raises(ConfigError) as err:
        parse_param(text)
    message = str(err.value)
    assert message.startswith(f"--param {text!r}: ") and says in message and "\n" not in message


def test_a_key_searched_twice_is_refused():
    with pytest.raises(ConfigError, match="already searched by --param 'train.lr=log:1e-5:1e-3'"):
        parse_params(["train.lr=log:1e-5:1e-3", "train.lr=float:0.1:0.2"])
    with pytest.raises(ConfigError, match="at least one --param"):
        parse_params([])


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=False)


@given(a=finite, b=finite)
def test_float_ranges_parse_back_exactly(a, b):
    low, high = sorted((a, b))
    if low == high:
        with pytest.raises(ConfigError, match="LOW < HIGH"):
            parse_param(f"x.y=float:{low!r}:{high!r}")
        return
    spec = parse_param(f"x.y=float:{low!r}:{high!r}")
    assert (spec.low, spec.high) == (low, high)
    assert spec.contains(low) and spec.contains(high) and spec.contains((low + high) / 2)
    assert not spec.contains(high + abs(high) + 1) and not spec.contains("0.5") and not spec.contains(True)


@given(low=st.integers(-1000, 1000), span=st.integers(1, 1000), step=st.integers(1, 50), k=st.integers(0, 100))
def test_int_grids_hold_their_points_only(low, span, step, k):
    high = low + span
    if step > span:
        with pytest.raises(ConfigError, match="STEP"):
            parse_param(f"x.y=int:{low}:{high}:{step}")
        return
    spec = parse_param(f"x.y=int:{low}:{high}:{step}")
    point = low + step * min(k, span // step)
    assert spec.contains(point)
    assert not spec.contains(point + 0.5)
    assert spec.contains(point + 1) == (step == 1 and point + 1 <= high)


scalars = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.none(),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
)


@given(value=scalars)
def test_a_sampled_value_reaches_the_config_unchanged(value):
    """The override a trial applies (``KEY=VALUE``) reads back as the same value and type
    (YAML 1.1 would read ``1e-05`` as a string: the override writes ``1.0e-05``)."""
    override = f"train.lr={yaml_scalar(value)}"
    got = parse_override(override)["train"]["lr"]
    assert got == value and type(got) is type(value)


def test_categorical_choices_are_yaml_scalars():
    spec = parse_param("a.b=cat:16,0.5,1e-5,true,null,balanced")
    assert spec.choices == (16, 0.5, 1e-5, True, None, "balanced")
    assert [type(c) for c in spec.choices] == [int, float, float, bool, type(None), str]


def test_enqueued_values_are_checked_against_the_space():
    specs = parse_params(
        ["train.lr=log:1e-9:1e-2", "train.sampler=cat:shuffle,balanced", "model.fusion.attention_heads=int:4:8"]
    )
    assert parse_enqueued("train.lr=1e-9, train.sampler=balanced, model.fusion.attention_heads=6", specs) == {
        "train.lr": 1e-9,
        "train.sampler": "balanced",
        "model.fusion.attention_heads": 6,
    }
    for text, says in [
        ("train.lr=1", "outside --param 'train.lr=log:1e-9:1e-2'"),
        ("train.sampler=random", "outside"),
        ("model.fusion.attention_heads=6.5", "outside"),
        ("train.epochs=3", "train.epochs is not a --param"),
        ("train.lr", "expected KEY=VALUE"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_enqueued(text, specs)


# -- the search loop on scripted scores (no training) ----------------------------------------------
@dataclass
class _Done:
    status: str
    stopped: bool = False

    def done(self) -> bool:
        return True

    def stop(self) -> None:
        self.stopped = True

    def record(self) -> dict[str, Any]:
        return {"status": self.status, "reason": None if self.status == "ok" else "RuntimeError: scripted"}


class ScriptedLauncher:
    """Writes each trial's history.json from its learning rate (no training): ``score(lr)`` per epoch."""

    def __init__(self, score, slots: int = 1) -> None:
        self.score = score
        self.slots = slots
        self.handles: dict[str, _Done] = {}
        self.slots_used: list[int] = []

    def start(self, job, slot):
        self.slots_used.append(slot)
        lr = job.config["train"]["lr"]
        scores = self.score(lr)
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        history = [{"epoch": e + 1, "val_dice": s, "val_auc": 1 - s} for e, s in enumerate(scores or [])]
        (run_dir / "history.json").write_text(json.dumps(history))
        self.handles[run_dir.name] = _Done("ok" if scores is not None else "failed")
        return self.handles[run_dir.name]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny generated MILK10k folder and a config reading it (the tuner checks and caches the data)."""
    from fusionkit.data import make_synthetic_milk10k

    root = tmp_path_factory.mktemp("tune-data")
    make_synthetic_milk10k(root / "milk", n_lesions=24, photo_size=(40, 30), seed=1)
    config = write_config(root / "cfg.yaml", tiny_run_config(root / "cache", n_lesions=24))
    return root / "milk", config


def scripted(tmp_path, small_data, score, *, trials=5, enqueue=(), out="out", slots=1, **kw):
    data, config = small_data
    launcher = ScriptedLauncher(score, slots)
    lines: list[str] = []
    tuner = Tuner(
        config,
        params=parse_params(["train.lr=log:1e-9:1e-2", "train.sampler=cat:shuffle,balanced"]),
        settings=TuneSettings(trials=trials, metric=kw.pop("metric", "dice"), poll_s=0.0, enqueue=enqueue, **kw),
        out=tmp_path / out,
        data_root=data,
        launcher=launcher,
        echo=lines.append,
    )
    return tuner.run(), launcher, lines


def _states(out: Path) -> dict[int, str]:
    study = optuna.load_study(study_name="fusionkit-tune", storage=f"sqlite:///{out / 'study.db'}")
    return {t.number: t.state.name for t in study.trials}


def test_a_trial_below_the_median_is_pruned_and_stopped(tmp_path, small_data):
    good = lambda lr: [0.5, 0.6] if lr >= 1e-4 else [0.1, 0.2]  # 1e-9 scripted to be bad
    enqueue = ({"train.lr": 1e-2}, {"train.lr": 1e-3}, {"train.lr": 1e-9})
    summary, launcher, lines = scripted(tmp_path, small_data, good, trials=3, enqueue=enqueue, prune_startup=2)
    assert _states(tmp_path / "out") == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}
    assert [launcher.handles[f"trial-{k}"].stopped for k in range(3)] == [False, False, True]
    assert any("trial 2 pruned at epoch 1" in line for line in lines)
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [(r["trial"], r["state"], r["epochs"]) for r in rows] == [
        ("0", "complete", "2"),
        ("1", "complete", "2"),
        ("2", "pruned", "1"),
    ]
    assert float(rows[0]["score"]) == 0.6  # the best epoch: scripted, not trained
    assert summary["best"]["score"] == 0.6


def test_pruning_waits_for_its_startup_trials_and_warmup(tmp_path, small_data):
    score = lambda lr: [0.5, 0.6] if lr >= 1e-4 else [0.1, 0.9]  # 1e-9: worst at epoch 1, best at epoch 2
    enqueue = ({"train.lr": 1e-2}, {"train.lr": 1e-9}, {"train.lr": 1e-3})
    scripted(tmp_path, small_data, score, trials=3, enqueue=enqueue, prune_startup=1, prune_warmup=1, out="warm")
    # trial 1 is below the median at epoch 1, a warmup epoch; at epoch 2 its best (0.9) is above (0.6).
    # Trial 2's best at epoch 2 (0.6) is below the median of 0.6 and 0.9.
    assert _states(tmp_path / "warm") == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED"}
    scripted(tmp_path, small_data, score, trials=3, enqueue=enqueue, prune_startup=1, prune_warmup=0, out="cold")
    assert _states(tmp_path / "cold") == {0: "COMPLETE", 1: "PRUNED", 2: "COMPLETE"}
    scripted(tmp_path, small_data, score, trials=3, enqueue=enqueue, prune_startup=3, out="startup")
    assert set(_states(tmp_path / "startup").values()) == {"COMPLETE"}  # fewer complete trials than the startup


def test_parallel_slots_run_every_trial_once(tmp_path, small_data):
    summary, launcher, _ = scripted(tmp_path, small_data, lambda lr: [lr], trials=5, slots=2, prune=False)
    assert sorted(r["trial"] for r in summary["trials"]) == [0, 1, 2, 3, 4]
    assert {r["state"] for r in summary["trials"]} == {"complete"}
    assert set(launcher.slots_used) == {0, 1}
    params = [tuple(sorted(r.items())) for r in summary["trials"]]
    assert len(set(params)) == 5


def test_best_yaml_is_the_best_trial_config(tmp_path, small_data):
    score = lambda lr: [min(1.0, lr * 100)]  # higher lr, higher score
    summary, _, _ = scripted(tmp_path, small_data, score, trials=4, prune=False)
    best = summary["best"]
    text = (tmp_path / "out" / "best.yaml").read_text()
    assert text.startswith(f"# fusionkit tune: best of 4 complete trials in {tmp_path / 'out'}: trial {best['trial']}")
    config = load_run_config(tmp_path / "out" / "best.yaml")
    assert config.train.lr == best["params"]["train.lr"] and config.train.sampler == best["params"]["train.sampler"]
    assert config.data.root == small_data[0].resolve()
    assert best["score"] == max(r["score"] for r in summary["trials"])
    md = (tmp_path / "out" / "summary.md").read_text()
    assert f"**Best: trial {best['trial']}**" in md and "optimistic" in md


def test_a_failed_trial_counts_and_a_study_of_other_params_is_refused(tmp_path, small_data):
    score = lambda lr: None if lr < 1e-4 else [0.5]
    summary, _, lines = scripted(
        tmp_path, small_data, score, trials=2, enqueue=({"train.lr": 1e-9}, {"train.lr": 1e-3})
    )
    assert [r["state"] for r in summary["trials"]] == ["fail", "complete"]
    assert summary["trials"][0]["note"] == "RuntimeError: scripted"
    data, config = small_data
    with pytest.raises(ConfigError, match="holds a study of another params"):
        Tuner(
            config,
            params=parse_params(["train.lr=log:1e-6:1e-2"]),
            settings=TuneSettings(trials=2, metric="dice"),
            out=tmp_path / "out",
            data_root=data,
            launcher=ScriptedLauncher(score),
        ).run()


def test_a_param_that_is_no_config_value_is_refused_before_anything_runs(tmp_path, small_data):
    data, config = small_data
    for text in ("train.lrr=log:1e-5:1e-3", "train.batch_size=int:0:8"):
        with pytest.raises(ConfigError, match=f"^--param '{text}': train"):
            Tuner(
                config,
                params=parse_params([text]),
                settings=TuneSettings(trials=2, metric="dice"),
                out=tmp_path / "x",
                data_root=data,
            )
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="--metric 'f1'"):
        Tuner(
            config,
            params=parse_params(["train.lr=log:1e-5:1e-3"]),
            settings=TuneSettings(trials=2, metric="f1"),
            out=tmp_path / "y",
            data_root=data,
        )


# -- the command line --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_errors_are_one_line(tmp_path, small_data):
    _, config = small_data
    bad = tune_cli(config, "--synthetic", "--param", "train.lr=log:0:1", "--out", tmp_path / "o")
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "fusionkit: error: --param 'train.lr=log:0:1': a log range needs LOW > 0, got 0"
    )
    unknown = tune_cli(config, "--synthetic", "--param", "train.lrr=log:1e-5:1e-3", "--out", tmp_path / "o")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "--param 'train.lrr=log:1e-5:1e-3': train.lrr" in unknown.stderr
    no_optuna = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['optuna'] = None; from fusionkit.cli import main; sys.argv[1:] = sys.argv[2:]; main()",
            "-",
            "tune",
            str(config),
            "--synthetic",
            "--param",
            "train.lr=log:1e-5:1e-3",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert no_optuna.returncode == 2
    assert (
        no_optuna.stderr.strip()
        == "fusionkit: error: fusionkit tune needs the tune extra: pip install 'jiadf-fusion[tune]'"
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_real_study_resumes_after_a_kill_and_prunes_the_bad_trial(tmp_path):
    """Four trials on generated data through the entry point. Trials 0-1 (lr 1e-2, 3e-3) learn;
    trial 2 (lr 1e-9) is the untrained model: it predicts no class above 0.5, so its macro Dice is 0
    at every epoch while a model that learned scores above 0 (an ordering, not a pinned float).
    The tuner is killed (SIGKILL) once trial 2 has started; the rerun keeps trials 0-1, marks 2
    failed, retries its values as trial 3 (pruned by the median of 0-1), and samples trial 4."""
    config = write_config(tmp_path / "cfg.yaml", tiny_run_config(tmp_path / "cache", epochs=2, n_lesions=100))
    out = tmp_path / "out"
    args = [
        config,
        "--synthetic",
        "--out",
        out,
        "--trials",
        4,
        "--param",
        "train.lr=log:1e-9:1e-2",
        "--param",
        "train.sampler=cat:shuffle,balanced",
        "--enqueue",
        "train.lr=1e-2,train.sampler=shuffle",
        "--enqueue",
        "train.lr=3e-3,train.sampler=shuffle",
        "--enqueue",
        "train.lr=1e-9",
        "--prune-startup",
        2,
    ]
    killed = tune_cli(*args, env={**ENV, KILL_HOOK: "2"})
    assert killed.returncode == -9, killed.stderr
    assert "trial 2 start: train.lr=1.0e-09" in killed.stderr
    finished = {k: (out / "trials" / f"trial-{k}" / "report.md").stat().st_mtime_ns for k in (0, 1)}
    assert _states(out) == {0: "COMPLETE", 1: "COMPLETE", 2: "RUNNING"}

    resumed = tune_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "trial 2: was running when the search stopped" in resumed.stderr
    assert "trial 0 start" not in resumed.stderr and "trial 1 start" not in resumed.stderr
    assert {k: (out / "trials" / f"trial-{k}" / "report.md").stat().st_mtime_ns for k in (0, 1)} == finished
    study = optuna.load_study(study_name="fusionkit-tune", storage=f"sqlite:///{out / 'study.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 5 and states[0] == states[1] == "COMPLETE" and states[2] == "FAIL"
    assert states[3] == "PRUNED" and states[4] in ("COMPLETE", "PRUNED")
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 4  # the total stays 4
    retry = study.trials[3]
    assert retry.user_attrs["retry_of"] == 2 and retry.params == study.trials[2].params
    assert retry.params["train.lr"] == 1e-9 and list(retry.intermediate_values.values())[0] == 0.0
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best.value > 0 and math.isfinite(best.value)

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(r["trial"], r["state"]) for r in rows] == [
        ("0", "complete"),
        ("1", "complete"),
        ("2", "fail"),
        ("3", "pruned"),
        ("4", states[4].lower()),
    ]
    assert rows[2]["note"] == "stopped with the search; retried as trial 3"
    config_best = load_run_config(out / "best.yaml")
    assert config_best.train.lr == best.params["train.lr"] and config_best.train.sampler == best.params["train.sampler"]
    assert yaml.safe_load((out / "best.yaml").read_text())["data"]["synthetic"]["n_lesions"] == 100
    assert f"best: trial {best.number}" in resumed.stdout
    pruned_record = json.loads((out / "trials" / "trial-3" / "sweep_run.json").read_text())
    assert pruned_record["status"] in ("interrupted", "ok")  # stopped by SIGTERM, or done before it came


@pytest.mark.slow
@pytest.mark.subprocess
def test_trials_as_submitit_jobs(tmp_path):
    pytest.importorskip("submitit")
    config = write_config(tmp_path / "cfg.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40))
    out = tmp_path / "out"
    result = tune_cli(
        config,
        "--synthetic",
        "--out",
        out,
        "--trials",
        2,
        "--param",
        "train.lr=log:1e-4:1e-2",
        "--launcher",
        "submitit",
        "--cluster",
        "local",
        "--parallel",
        2,
        "--no-prune",
    )
    assert result.returncode == 0, result.stderr
    assert [r["state"] for r in csv.DictReader((out / "trials.csv").open())] == ["complete", "complete"]
    assert list((out / "submitit").glob("*_result.pkl"))
    assert load_run_config(out / "best.yaml").train.epochs == 1
