"""The run-directory rules of ``fusionkit.train.resume``, driven directly: what ``claim_run_dir``
keeps, deletes and refuses (whole messages), which settings ``resume_changes`` lets a resumed run
change, and what ``record_resume`` appends to ``resumes.json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from train_helpers import tiny_run_config, write_config

from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.lock import LOCK_NAME
from fusionkit.train.resume import (
    APPLIED_ON_RESUME,
    FIXED_BY_COSINE,
    RunStart,
    claim_run_dir,
    record_resume,
    resume_changes,
)


def _run(path: Path, *, last: bool = False) -> Path:
    """A run directory with a config, a lock, a generated set, a log, a record and sub-folders."""
    (path / "checkpoints").mkdir(parents=True)
    write_config(path / "config.yaml", tiny_run_config(path / "cache", epochs=3))
    for name in (LOCK_NAME, "train.log", "resumes.json", "history.csv"):
        (path / name).write_text(name)
    (path / "synthetic").mkdir()
    (path / "synthetic" / "MILK10k_Training_GroundTruth.csv").write_text("x")
    (path / "checkpoints" / "best.safetensors").write_bytes(b"x")
    if last:
        (path / "checkpoints" / "last.safetensors").write_bytes(b"x")
    return path


def _message(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    return str(excinfo.value)


# -- claim_run_dir -----------------------------------------------------------------------------
def test_resume_from_a_checkpoint_reads_the_saved_config_and_touches_nothing(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", last=True)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    start = claim_run_dir(run, resume=True, overwrite=False)
    assert start.from_checkpoint and not start.restarted
    assert start.saved is not None and start.saved.train.epochs == 3
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_resume_without_a_checkpoint_keeps_the_lock_the_data_the_log_and_the_record(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    start = claim_run_dir(run, resume=True, overwrite=False)
    assert start == RunStart(saved=None, restarted=True)
    assert sorted(p.name for p in run.iterdir()) == sorted([LOCK_NAME, "resumes.json", "synthetic", "train.log"])
    assert (run / "synthetic" / "MILK10k_Training_GroundTruth.csv").read_text() == "x"
    assert (run / "train.log").read_text() == "train.log"


def test_overwrite_deletes_a_run_but_the_lock_and_follows_no_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run = _run(tmp_path / "run", last=True)
    (run / "linked").symlink_to(outside, target_is_directory=True)
    start = claim_run_dir(run, resume=False, overwrite=True)
    assert start == RunStart(saved=None, restarted=False)
    assert [p.name for p in run.iterdir()] == [LOCK_NAME]
    assert (outside / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("scratch", [[], [LOCK_NAME], [LOCK_NAME, "synthetic"]])
def test_a_folder_with_only_scratch_entries_is_a_fresh_start(tmp_path: Path, scratch: list[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in scratch:
        (run / name).mkdir()
    assert claim_run_dir(run, resume=False, overwrite=False) == RunStart(saved=None)
    assert sorted(p.name for p in run.iterdir()) == sorted(scratch)
    assert claim_run_dir(run, resume=False, overwrite=True) == RunStart(saved=None)
    assert [p.name for p in run.iterdir()] == ([LOCK_NAME] if scratch else [])


def test_an_absent_folder_is_a_fresh_start(tmp_path: Path) -> None:
    assert claim_run_dir(tmp_path / "new", resume=False, overwrite=False) == RunStart(saved=None)
    assert not (tmp_path / "new").exists()
    # --overwrite of a folder that is not there yet is a fresh start too, not a FileNotFoundError
    assert claim_run_dir(tmp_path / "new", resume=False, overwrite=True) == RunStart(saved=None)
    assert not (tmp_path / "new").exists()


def test_claim_run_dir_refusals_name_the_folder_and_the_way_out(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", last=True)
    with pytest.raises(ConfigError) as exc:
        claim_run_dir(run, resume=True, overwrite=True)
    assert _message(exc) == "give either --resume (continue the run) or --overwrite (start it over), not both"
    with pytest.raises(ConfigError) as exc:
        claim_run_dir(run, resume=False, overwrite=False)
    assert _message(exc) == (
        f"{run} already holds a run; pass --resume to continue it, --overwrite to start it over, "
        "or choose another --out"
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / LOCK_NAME).write_text("")
    (photos / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError) as exc:
        claim_run_dir(photos, resume=False, overwrite=False)
    assert _message(exc) == f"{photos} is not empty and holds no fusionkit run; choose another --out"
    with pytest.raises(ConfigError) as exc:
        claim_run_dir(photos, resume=False, overwrite=True)
    assert _message(exc) == f"{photos} holds files but no fusionkit run; --overwrite deletes only runs"
    with pytest.raises(ConfigError) as exc:
        claim_run_dir(photos, resume=True, overwrite=False)
    assert _message(exc) == f"{photos}: --resume, but there is no run there (no config.yaml)"
    assert sorted(p.name for p in photos.iterdir()) == sorted([LOCK_NAME, "holiday.jpg"])
    with pytest.raises(ConfigError) as exc:
        claim_run_dir(tmp_path / "absent", resume=True, overwrite=False)
    assert _message(exc) == f"{tmp_path / 'absent'}: --resume, but there is no run there (no config.yaml)"


# -- resume_changes ----------------------------------------------------------------------------
def _config(tmp_path: Path, *, data: dict | None = None, model: dict | None = None, **train) -> RunConfig:
    raw = tiny_run_config(tmp_path, **train)
    raw["data"].update(data or {})
    raw["model"]["overrides"].update(model or {})
    return RunConfig.model_validate(raw)


def test_every_applied_field_may_change_and_is_listed_in_path_order(tmp_path: Path) -> None:
    base = _config(tmp_path)
    new = _config(
        tmp_path,
        data={"num_workers": 2, "root": "/data/milk"},
        epochs=4,
        lr=0.01,
        eval_batch_size=16,
        tracking=["tensorboard"],
    )
    assert resume_changes(base, new, run_dir=tmp_path, synthetic=True) == [
        "data.num_workers: 0 -> 2",
        "data.root: None -> '/data/milk'",
        "train.epochs: 2 -> 4",
        "train.eval_batch_size: None -> 16",
        "train.lr: 0.003 -> 0.01",
        "train.tracking: [] -> ['tensorboard']",
    ]
    assert resume_changes(base, _config(tmp_path), run_dir=tmp_path, synthetic=False) == []


def test_the_generated_set_counts_only_for_a_synthetic_run(tmp_path: Path) -> None:
    base = _config(tmp_path)
    other = _config(tmp_path, data={"synthetic": {"n_lesions": 30, "photo_size": [40, 30], "seed": 3}})
    assert resume_changes(base, other, run_dir=tmp_path, synthetic=False) == []
    with pytest.raises(ConfigError) as exc:
        resume_changes(base, other, run_dir=tmp_path, synthetic=True)
    assert _message(exc) == (
        f"{tmp_path}: --resume cannot change data.synthetic.n_lesions (60 -> 30); resume with the run's "
        f"own value or start a new --out (changeable on resume: {', '.join(sorted(APPLIED_ON_RESUME))})"
    )
    # the caller's configs are not changed by the comparison
    assert base.data.synthetic.n_lesions == 60 and other.data.synthetic.n_lesions == 30


def test_a_changed_model_spec_names_its_first_three_fields(tmp_path: Path) -> None:
    base = _config(tmp_path)
    other = _config(
        tmp_path,
        model={"image_size": 64, "fusion": {"kind": "mmfa", "attention_heads": 2, "head_dim": 4, "out_dim": 16}},
        lr=0.5,
        batch_size=4,
    )
    with pytest.raises(ConfigError) as exc:
        resume_changes(base, other, run_dir=tmp_path, synthetic=True)
    assert _message(exc) == (
        f"{tmp_path}: --resume with a different model spec (fusion.attention_heads: 8 -> 2; fusion.head_dim: 64 -> 4; "
        "fusion.out_dim: 512 -> 16); resume with the run's own config or start a new --out"
    )


def test_refused_fields_are_all_named_with_what_may_change(tmp_path: Path) -> None:
    base = _config(tmp_path)
    with pytest.raises(ConfigError) as exc:
        resume_changes(
            base, _config(tmp_path, data={"split_seed": 1}, batch_size=4, lr=0.5), run_dir=tmp_path, synthetic=True
        )
    assert _message(exc) == (
        f"{tmp_path}: --resume cannot change data.split_seed (0 -> 1), train.batch_size (8 -> 4); resume with "
        f"the run's own value or start a new --out (changeable on resume: {', '.join(sorted(APPLIED_ON_RESUME))})"
    )


def test_a_cosine_run_fixes_its_length_and_base_lr(tmp_path: Path) -> None:
    cosine = {"kind": "cosine", "warmup_epochs": 0.0}
    base = _config(tmp_path, scheduler=cosine)
    applied = sorted(APPLIED_ON_RESUME - FIXED_BY_COSINE)
    with pytest.raises(ConfigError) as exc:
        resume_changes(base, _config(tmp_path, scheduler=cosine, lr=0.5), run_dir=tmp_path, synthetic=True)
    assert _message(exc) == (
        f"{tmp_path}: --resume cannot change train.lr (0.003 -> 0.5); resume with the run's own value or start "
        f"a new --out (changeable on resume: {', '.join(applied)})"
    )
    new = _config(tmp_path, scheduler=cosine, grad_clip=1.0)
    assert resume_changes(base, new, run_dir=tmp_path, synthetic=True) == ["train.grad_clip: None -> 1.0"]


# -- record_resume -----------------------------------------------------------------------------
def test_record_resume_appends_one_record_per_resume(tmp_path: Path) -> None:
    record_resume(tmp_path, epoch=0, batch=3, changes=["train.lr: 0.1 -> 0.2"], restarted=False)
    record_resume(tmp_path, epoch=4, batch=0, changes=[], restarted=True)
    text = (tmp_path / "resumes.json").read_text()
    times = re.findall(r'"time": "([^"]*)"', text)
    assert len(times) == 2
    for stamp in times:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", stamp), stamp
    expected = [
        {
            "time": times[0],
            "from_epoch": 1,
            "from_batch": 3,
            "restarted_from_beginning": False,
            "changes": ["train.lr: 0.1 -> 0.2"],
        },
        {"time": times[1], "from_epoch": 5, "from_batch": 0, "restarted_from_beginning": True, "changes": []},
    ]
    assert text == json.dumps(expected, indent=2) + "\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_the_saved_config_is_the_one_on_disk(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", last=True)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["train"]["lr"] = 0.25
    write_config(run / "config.yaml", raw)
    start = claim_run_dir(run, resume=True, overwrite=False)
    assert start.saved is not None and start.saved.train.lr == 0.25


def test_a_component_of_another_kind_or_none_is_a_model_change_field_by_field(tmp_path: Path) -> None:
    base = _config(tmp_path)
    concat = _config(tmp_path, model={"fusion": {"kind": "concat"}})
    with pytest.raises(ConfigError) as exc:
        resume_changes(base, concat, run_dir=tmp_path, synthetic=True)
    assert _message(exc) == (
        f"{tmp_path}: --resume with a different model spec (fusion.activation: 'gelu' -> None; "
        "fusion.attention_heads: 8 -> None; fusion.head_dim: 64 -> None); resume with the run's own config or start a new --out"
    )
    no_fusion = RunConfig.model_validate(tiny_run_config(tmp_path, preset="derm-clinical"))
    assert no_fusion.model.fusion is None
    with pytest.raises(ConfigError) as exc:  # fusion: None -> a block is compared, not iterated
        resume_changes(no_fusion, base, run_dir=tmp_path, synthetic=True)
    assert _message(exc) == (
        f"{tmp_path}: --resume with a different model spec (decision.activation: None -> 'relu'; "
        "decision.branch: 'image' -> None; decision.detach_logits: None -> False); resume with the run's own "
        "config or start a new --out"
    )
