"""Issue 13's training options: each unit pinned on its own, then one short run with all of them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from train_helpers import TINY_IMAGE_ENCODER, tiny_run_config, write_config

import fusionkit as fk
from fusionkit.losses import JointIndividualLoss
from fusionkit.model import FusionOutput
from fusionkit.runtime.checkpoint import model_state, read_checkpoint, save_checkpoint
from fusionkit.runtime.config import MixupSpec, RunConfig, SchedulerSpec
from fusionkit.train.ema import ModelEma
from fusionkit.train.mixup import mix_batch
from fusionkit.train.param_groups import backbone_parameter_names, param_groups
from fusionkit.train.schedules import LrSchedule
from fusionkit.train.tracking import Tracker
from fusionkit.train.trainer import Trainer, train_run
from fusionkit.train.warm_start import warm_start

TINY = {"image_encoder": dict(TINY_IMAGE_ENCODER), "image_size": 32}


# -- EMA -------------------------------------------------------------------------------------------
def test_ema_update_rule_averages_floats_and_copies_integer_buffers() -> None:
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = ModelEma(model=model, decay=0.9)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[11.0, -8.0]]))
        model[1].running_mean.fill_(5.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    # W_ema = 0.9 * W_ema + 0.1 * W
    assert torch.allclose(ema.module[0].weight, torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(ema.module[1].running_mean, torch.tensor([0.5]))
    assert int(ema.module[1].num_batches_tracked) == 7
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, torch.tensor([[2.9, 0.1]]))
    assert not any(p.requires_grad for p in ema.module.parameters())


# -- schedules -------------------------------------------------------------------------------------
def _lrs(schedule: LrSchedule, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        schedule.after_step()
    return seen


def test_warmup_cosine_curve_and_resume() -> None:
    param = nn.Parameter(torch.zeros(1))
    spec = SchedulerSpec(kind="cosine", warmup_epochs=1, min_lr=0.1)
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = LrSchedule(spec=spec, optimizer=opt, epochs=3, steps_per_epoch=2)
    # W = 2 warmup steps (lr/2, lr), then a cosine over 4 steps from 1.0 to the floor 0.1
    curve = [
        0.5,
        1.0,
        1.0,
        0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2,
        0.55,
        0.1 + 0.9 * (1 + math.cos(3 * math.pi / 4)) / 2,
    ]
    assert _lrs(schedule, opt, 3) == pytest.approx(curve[:3])
    state = json.loads(json.dumps(schedule.state_dict()))  # what the checkpoint stores
    opt2 = torch.optim.SGD([param], lr=1.0)
    resumed = LrSchedule(spec=spec, optimizer=opt2, epochs=3, steps_per_epoch=2)
    opt2.load_state_dict(opt.state_dict())  # as load_checkpoint does: the optimizer, then the schedule
    resumed.load_state_dict(state)
    assert _lrs(resumed, opt2, 3) == pytest.approx(curve[3:])
    schedule.after_epoch(0.0)  # the cosine schedule ignores the epoch's Dice
    assert opt.param_groups[0]["lr"] == pytest.approx(curve[3])
    # a graphed step's lr is a tensor the graph reads: the schedule fills it in place
    lr = torch.tensor(1.0)
    opt3 = torch.optim.SGD([param], lr=lr)
    graphed = LrSchedule(spec=spec, optimizer=opt3, epochs=3, steps_per_epoch=2)
    assert _lrs(graphed, opt3, 2) == pytest.approx(curve[:2])
    assert opt3.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(curve[2])


def test_plateau_is_the_default_and_moves_only_per_epoch() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = LrSchedule(spec=SchedulerSpec(patience=0), optimizer=opt, epochs=3, steps_per_epoch=2)
    assert _lrs(schedule, opt, 4) == [1.0] * 4
    schedule.after_epoch(0.5)
    schedule.after_epoch(0.4)  # no improvement, patience 0: halved
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="warmup_epochs needs kind: cosine"):
        SchedulerSpec(warmup_epochs=1)


# -- parameter groups ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model() -> fk.FusionModel:
    torch.manual_seed(0)
    return fk.FusionModel(fk.load_preset("ji-adf", TINY), metadata_width=6)


def test_param_groups_split_backbone_and_norms(tiny_model: fk.FusionModel) -> None:
    default = param_groups(tiny_model, lr=1e-4, weight_decay=1e-5)
    assert len(default) == 1 and default[0]["params"] == list(tiny_model.parameters())
    groups = param_groups(
        tiny_model,
        lr=1e-3,
        weight_decay=0.05,
        backbone_lr=1e-5,
        backbone_weight_decay=0.01,
        no_decay_norm_bias=True,
    )
    opt = torch.optim.AdamW(groups)
    by_name = {g["name"]: (g["lr"], g["weight_decay"], g["params"]) for g in opt.param_groups}
    assert {k: v[:2] for k, v in by_name.items()} == {
        "backbone": (1e-5, 0.01),
        "backbone_no_decay": (1e-5, 0.0),
        "rest": (1e-3, 0.05),
        "rest_no_decay": (1e-3, 0.0),
    }
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    backbone = backbone_parameter_names(tiny_model)  # the image encoders' contract
    assert backbone and all(n.startswith("image_stream.encoders.") for n in backbone)
    for key, (_, _, params) in by_name.items():
        for p in params:
            assert (names[id(p)] in backbone) == key.startswith("backbone")
            assert (p.ndim <= 1) == key.endswith("no_decay")
    assert sum(len(v[2]) for v in by_name.values()) == len(names)


# -- soft targets in the eq-7 loss and mixup/cutmix --------------------------------------------------
def _output(logits: torch.Tensor, present: torch.Tensor) -> FusionOutput:
    return FusionOutput(
        probs=logits.softmax(-1),
        log_probs=logits.log_softmax(-1),
        logits={"joint": logits * 2, "meta": -logits},
        present={"meta": present},
        weights=None,
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_one_hot_soft_targets_give_the_index_loss(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 4, generator=g) * 3
    labels = torch.randint(0, 4, (6,), generator=g)
    present = torch.rand(6, generator=g) > 0.4
    loss = JointIndividualLoss(class_weights=(1.0, 2.0, 0.5, 3.0))
    hard = loss(_output(logits, present), labels)
    soft = loss(_output(logits, present), nn.functional.one_hot(labels, 4).float())
    for a, b in [(hard.total, soft.total), *((hard.terms[k], soft.terms[k]) for k in hard.terms)]:
        assert torch.allclose(a, b, atol=1e-6)


def test_mixed_target_weights_each_class_by_its_share_and_class_weight() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = logits.log_softmax(-1)[0]
    loss = JointIndividualLoss(lambda_joint=0, lambda_image=0, lambda_meta=0, class_weights=(1.0, 3.0, 1.0))
    out = loss(_output(logits, torch.ones(1, dtype=torch.bool)), torch.tensor([[0.7, 0.3, 0.0]]))
    expected = -(0.7 * 1 * log_p[0] + 0.3 * 3 * log_p[1]) / (0.7 + 0.9)
    assert out.total.item() == pytest.approx(expected.item())


def _batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "derm": torch.randn(n, 3, 8, 10, generator=g),
        "clinical": torch.randn(n, 3, 8, 10, generator=g),
        "meta": torch.randn(n, 5, generator=g),
        "label": torch.tensor([0, 1, 2, 3, 4, 5])[:n],
        "present": {
            "derm": torch.ones(n, dtype=torch.bool),
            "clinical": torch.tensor([1, 1, 1, 0, 1, 1], dtype=torch.bool),
            "meta": torch.ones(n, dtype=torch.bool),
        },
    }


def test_mixup_blends_images_metadata_and_labels_alike() -> None:
    torch.manual_seed(0)
    batch = _batch()
    out, info = mix_batch(batch, spec=MixupSpec(mixup_alpha=0.4), num_classes=11)
    lam, perm = info.lam, info.perm
    assert info.kind == "mixup" and 0 < lam < 1
    for key in ("derm", "clinical", "meta"):
        assert torch.allclose(out[key], lam * batch[key] + (1 - lam) * batch[key][perm])
    expected = torch.zeros(6, 11)
    expected[torch.arange(6), batch["label"]] += lam
    expected[torch.arange(6), batch["label"][perm]] += 1 - lam
    assert torch.allclose(out["label"], expected) and torch.allclose(out["label"].sum(1), torch.ones(6))
    # a mixed clinical image counts as present when either lesion has one
    has = batch["present"]["clinical"]
    assert out["present"]["clinical"].tolist() == [bool(has[i] or has[perm[i]]) for i in range(6)]
    assert out["present"]["clinical"].tolist() != has.tolist()


def test_cutmix_pastes_one_box_into_both_images_and_weights_the_label_by_its_area() -> None:
    torch.manual_seed(3)
    batch = _batch()
    out, info = mix_batch(batch, spec=MixupSpec(cutmix_alpha=1.0), num_classes=11)
    assert info.kind == "cutmix"
    changed = [(out[k] != batch[k]).any(dim=(0, 1)) for k in ("derm", "clinical")]
    assert torch.equal(changed[0], changed[1])  # the same pixels in both images
    area = float(changed[0].float().mean())
    assert area > 0 and info.lam == pytest.approx(1 - area)
    rows = torch.arange(6)
    assert torch.allclose(out["label"][rows, batch["label"]], torch.full((6,), info.lam))
    assert torch.equal(out["meta"], batch["meta"])


def test_mixing_off_gives_one_hot_targets_and_draws_no_random_numbers() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    out, info = mix_batch(_batch(), spec=MixupSpec(), num_classes=11)
    assert info.kind == "none" and torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out["label"].argmax(1), _batch()["label"]) and out["label"].sum().item() == 6


# -- warm start ------------------------------------------------------------------------------------
def test_warm_start_loads_matching_tensors_and_lists_the_rest(tmp_path: Path, tiny_model) -> None:
    torch.manual_seed(1)
    derm_only = fk.FusionModel(fk.load_preset("derm-only", TINY), metadata_width=6)
    path = save_checkpoint(tmp_path / "derm.safetensors", model=derm_only, include_rng=False)
    torch.manual_seed(2)
    trimodal = fk.FusionModel(fk.load_preset("ji-adf", TINY), metadata_width=6)
    before = model_state(trimodal)
    report = warm_start(trimodal, path)
    source, after = model_state(derm_only), model_state(trimodal)
    derm = [k for k in before if k.startswith("image_stream.encoders.derm.")]
    assert derm and set(derm) <= set(report.loaded)
    for key in after:
        expected = source[key] if key in report.loaded else before[key]
        assert torch.equal(after[key], expected), key
    assert any(k.startswith("image_stream.encoders.clinical.") for k in report.missing)
    assert set(report.loaded) | set(report.missing) | {m.split(":")[0] for m in report.mismatched} == set(before)
    assert "missing" in report.summary()
    with pytest.raises(fk.errors.ConfigError, match="init_from: .*nothing.safetensors: no such"):
        warm_start(trimodal, tmp_path / "nothing.safetensors")


# -- tracking --------------------------------------------------------------------------------------
def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_tracker_writes_event_files(tmp_path: Path) -> None:
    tracker = Tracker(backends=("tensorboard",), run_dir=tmp_path)
    tracker.log_scalars({"train/loss": 1.5, "val/dice": 0.25}, step=1)
    tracker.log_scalars({"train/loss": 0.5, "val/dice": 0.75}, step=2)
    from PIL import Image

    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "roc.png")
    tracker.log_figures([tmp_path / "roc.png"], step=2)
    tracker.close()
    assert _scalars(tmp_path) == {"train/loss": [1.5, 0.5], "val/dice": [0.25, 0.75]}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    image = acc.Images("report/roc")[0]
    assert (image.step, image.width, image.height) == (2, 5, 4)
    assert not Tracker(backends=(), run_dir=tmp_path / "off").active
    assert not (tmp_path / "off").exists()


# -- the trainer -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("options-cache")


OFF = {
    "ema_decay": None,
    "scheduler": {"kind": "plateau", "warmup_epochs": 0.0},
    "backbone_lr": 3e-3,  # = train.lr: the backbone gets a group of its own with the same settings
    "backbone_weight_decay": 1e-5,  # = train.weight_decay
    "no_decay_norm_bias": False,
    "mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.0},  # configured, never applied
    "tracking": [],
    "init_from": None,
    "layer_decay": None,
    "freeze_backbone_epochs": 0,
    "linear_probe": False,
    "grad_checkpointing": False,
}
"""Every issue-13 option at a value that must leave training exactly as the default recipe."""


@pytest.mark.trains
def test_default_recipe_trains_as_before(tmp_path: Path, cache_dir: Path) -> None:
    """No option set is Appendix A.2's recipe, and the options at their off values change no bit.

    Both runs are made here, in one process: a float that a CPU training step computes depends on
    the processor's vector units, so no loss is pinned to a value from another machine.
    """
    default = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=2, n_lesions=40))
    off = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=2, n_lesions=40, **OFF))
    assert off.train != default.train  # the comparison is not of one config with itself
    reference = train_run(default, run_dir=tmp_path / "default", synthetic=True, progress=False)
    options_off = train_run(off, run_dir=tmp_path / "off", synthetic=True, progress=False)
    # the recipe: one AdamW group holding every parameter in the model's order, the configured lr and
    # weight decay, torch's default betas and eps; ReduceLROnPlateau (the lr moves per epoch only); no EMA
    (group,) = reference.optimizer.param_groups
    assert type(reference.optimizer) is torch.optim.AdamW
    assert group["params"] == list(reference.model.parameters())
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (3e-3, 1e-5, (0.9, 0.999), 1e-8)
    assert not group["amsgrad"] and reference.ema is None
    assert [r["lr"] for r in reference.history] == [3e-3, 3e-3]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in reference.history)
    assert reference.history[0]["train_loss"] != reference.history[1]["train_loss"]  # it trained
    # the off values: two groups with the same settings, the same steps, the same numbers to the bit
    assert [g["name"] for g in options_off.optimizer.param_groups] == ["backbone", "rest"] and options_off.ema is None
    timing = ("seconds", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in options_off.history] == [
        {k: v for k, v in r.items() if k not in timing} for r in reference.history
    ]
    a, b = model_state(reference.model), model_state(options_off.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("best", "last"):
        saved_a, _ = read_checkpoint(tmp_path / "default" / "checkpoints" / f"{name}.safetensors")
        saved_b, _ = read_checkpoint(tmp_path / "off" / "checkpoints" / f"{name}.safetensors")
        assert saved_a.keys() == saved_b.keys() and all(torch.equal(saved_a[k], saved_b[k]) for k in saved_a)


OPTIONS = {
    "ema_decay": 0.9,
    "scheduler": {"kind": "cosine", "warmup_epochs": 0.5},
    "backbone_lr": 1e-3,
    "no_decay_norm_bias": True,
    "mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0},
    "tracking": ["tensorboard"],
}


@pytest.mark.trains
def test_all_options_train_resume_bit_exactly_and_track(tmp_path: Path, cache_dir: Path) -> None:
    config = RunConfig.model_validate(tiny_run_config(cache_dir, epochs=2, n_lesions=24, **OPTIONS))
    full = train_run(config, run_dir=tmp_path / "full", synthetic=True, progress=False)
    interrupted = Trainer(config, run_dir=tmp_path / "cut", synthetic=True, progress=False)
    interrupted.interrupt()  # Ctrl-C during the first batch
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    interrupted.close()
    resumed = train_run(config, run_dir=tmp_path / "cut", synthetic=True, resume=True, progress=False)
    for a, b in [(full.model, resumed.model), (full.ema.module, resumed.ema.module)]:
        sa, sb = model_state(a), model_state(b)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # (the interrupted epoch's train loss averages only the batches after the resume)
    assert full.history[1]["train_loss"] == resumed.history[1]["train_loss"]
    assert [(r["val_loss"], r["lr"]) for r in full.history] == [(r["val_loss"], r["lr"]) for r in resumed.history]
    # the averaged weights are what is validated and kept as best, and last holds both
    tensors, meta = read_checkpoint(tmp_path / "full" / "checkpoints" / "best.safetensors")
    best_epoch = meta["info"]["epoch"]
    assert best_epoch in (1, 2)
    last, _ = read_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    ema_keys = [k for k in last if k.startswith("ema.")]
    assert ema_keys and all(not torch.equal(last[k], last["model." + k[4:]]) for k in ema_keys if "weight" in k)
    if best_epoch == 2:
        assert all(torch.equal(tensors["model." + k[4:]], last[k]) for k in ema_keys)
    lrs = {g["name"]: float(g["lr"]) for g in full.optimizer.param_groups}
    assert set(lrs) == {"backbone", "backbone_no_decay", "rest", "rest_no_decay"}
    scalars = _scalars(tmp_path / "full")
    for tag in (
        "train/loss",
        "train/loss_final",
        "train/loss_joint",
        "train/loss_image",
        "train/loss_meta",
        "val/dice",
        "val/multiclass_accuracy",
        "lr/backbone",
        "lr/rest",
    ):
        assert len(scalars[tag]) == 2, tag
    assert scalars["train/loss"] == pytest.approx([r["train_loss"] for r in full.history])
    assert scalars["lr/rest"][-1] < 3e-3  # the cosine has decayed from train.lr


def test_cli_help_names_the_options_and_a_bad_warm_start_exits_2(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from typer.testing import CliRunner

    from fusionkit.cli import app, main

    help_text = CliRunner().invoke(app, ["train", "--help"], terminal_width=120).output
    for option in ("ema_decay", "scheduler.kind", "backbone_lr", "mixup", "init_from", "tracking", "layer_decay"):
        assert option in help_text, option
    config = write_config(tmp_path / "c.yaml", tiny_run_config(cache_dir, epochs=1, n_lesions=24))
    # the console script's own function, in this process (the subprocess path: tests/test_cli_lifecycle.py)
    argv = ["fusionkit", "train", str(config), "--synthetic", "--quiet", "--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", [*argv, "--set", f"train.init_from={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "train.init_from" in err and "no such run directory" in err


# -- pinned details (each closes mutants of the 2026-11-27 mutmut run; tests/README.md) -------------
class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return scale * self.linear(x)


def test_ema_decay_bounds_mismatch_and_forward() -> None:
    model = _Scaled()
    assert ModelEma(model=model, decay=0.0).decay == 0.0  # 0 is allowed: the copy follows the model
    for decay in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError) as info:
            ModelEma(model=model, decay=decay)
        assert str(info.value) == f"EMA decay must be in [0, 1); got {decay}"
    ema = ModelEma(model=model, decay=0.5)
    x = torch.randn(3, 2)
    assert torch.equal(ema(x, scale=3.0), 3.0 * model.linear(x).detach())
    with pytest.raises(ValueError) as info:
        ema.update(nn.Linear(2, 1, bias=False))
    assert str(info.value) == "the EMA copy and the model have different tensors"


def test_warm_start_from_a_run_folder_and_from_a_plain_state_dict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = nn.Linear(2, 3)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(fk.errors.ConfigError) as info:
        warm_start(nn.Linear(2, 3), run)
    assert str(info.value) == (f"train.init_from: {run} is a folder without {run / 'checkpoints' / 'best.safetensors'}")
    save_checkpoint(run / "checkpoints" / "best.safetensors", model=source, include_rng=False)
    target = nn.Linear(2, 3)
    report = warm_start(target, run)
    assert report.source == run / "checkpoints" / "best.safetensors"
    assert torch.equal(target.weight, source.weight)
    assert report.summary() == f"warm start from {report.source}: loaded 2 tensors"

    plain = tmp_path / "plain.safetensors"
    save_file(
        {
            "weight": torch.ones(3, 2),
            "extra": torch.zeros(1),
            "extra2": torch.zeros(1),
            "bias": torch.zeros(4),
            "optim.state": torch.zeros(1),
            "rng.torch": torch.zeros(1),
            "ema.weight": torch.zeros(1),
        },
        str(plain),
    )
    report = warm_start(target, plain)
    assert torch.equal(target.weight, torch.ones(3, 2))
    assert (report.loaded, report.unexpected) == (["weight"], ["extra", "extra2"])
    assert report.summary() == (
        f"warm start from {plain}: loaded 1 tensors; mismatched 1: bias: (4,) -> (3,); unexpected 2: extra, extra2"
    )


def test_warmup_cosine_edges_and_floors() -> None:
    from fusionkit.train.schedules import WarmupCosine
    from fusionkit.utils.tables import json_value  # the scheduler state's JSON-safe copy

    f = WarmupCosine(warmup_steps=3, total_steps=2, floor=0.2)  # T is raised to W + 1
    assert [f(s) for s in range(7)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.2, 0.2, 0.2])
    assert json_value({"a": torch.tensor(2.5), "b": (torch.tensor(1.0), 3)}) == {"a": 2.5, "b": [1.0, 3]}
    param = nn.Parameter(torch.zeros(1))
    for lr, min_lr, last in [(0.5, 0.1, 0.1), (0.5, 0.8, 0.5)]:  # a floor above lr keeps lr flat
        opt = torch.optim.SGD([param], lr=lr)
        spec = SchedulerSpec(kind="cosine", min_lr=min_lr)
        schedule = LrSchedule(spec=spec, optimizer=opt, epochs=2, steps_per_epoch=2)
        assert _lrs(schedule, opt, 6)[-1] == pytest.approx(last)
    opt = torch.optim.SGD([param], lr=1.0)
    plateau = LrSchedule(spec=SchedulerSpec(patience=0, min_lr=0.3), optimizer=opt, epochs=1, steps_per_epoch=1)
    lrs = []
    for _ in range(4):
        plateau.after_epoch(0.1)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.3, 0.3]


def test_sampler_drops_a_last_batch_of_one_and_balanced_orders_are_seeded() -> None:
    from fusionkit.train.sampler import EpochSampler

    for n, world_size, batch_size, expected in [
        (5, 1, 2, 4),
        (5, 1, 3, 5),
        (6, 2, 2, 2),
        (7, 1, 3, 6),
        (5, 1, None, 5),
        (5, 1, 1, 5),
    ]:
        for rank in range(world_size):
            sampler = EpochSampler(list(range(n)), seed=0, rank=rank, world_size=world_size, batch_size=batch_size)
            assert len(sampler) == len(list(sampler)) == expected, (n, world_size, batch_size)
    labels = [0, 0, 0, 1, 1, 2]
    first = list(EpochSampler(labels, seed=4, mode="balanced"))
    torch.rand(5)  # the global random stream plays no part
    assert list(EpochSampler(labels, seed=4, mode="balanced")) == first


def test_cutmix_box_and_its_pixels_are_exact() -> None:
    from fusionkit.train.mixup import _pixels, cutmix_box

    assert cutmix_box(0.75, (0.5, 0.5)) == pytest.approx((0.25, 0.75, 0.25, 0.75))  # side 0.5
    assert cutmix_box(0.75, (0.9, 0.8)) == pytest.approx((0.65, 1.0, 0.55, 1.0))  # clipped
    assert cutmix_box(0.84, (0.1, 0.05)) == pytest.approx((0.0, 0.3, 0.0, 0.25))
    assert _pixels((0.25, 0.75, 0.5, 1.0), 8, 10) == (2, 6, 5, 10)


def test_mix_batch_choice_box_and_presence_per_method() -> None:
    batch = _batch()
    batch["present"]["meta"] = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    out, info = mix_batch(batch, spec=MixupSpec(), num_classes=11)
    assert out["label"].dtype == torch.float32 and info.box is None
    for seed in range(4):
        torch.manual_seed(seed)
        both = MixupSpec(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=1.0)
        out, info = mix_batch(batch, spec=both, num_classes=11)
        assert info.kind == "cutmix" and torch.equal(out["present"]["meta"], batch["present"]["meta"])
        top, bottom, left, right = (
            round(info.box[0] * 8),
            round(info.box[1] * 8),
            round(info.box[2] * 10),
            round(info.box[3] * 10),
        )
        inside = torch.zeros(8, 10, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        for key in ("derm", "clinical"):
            torch.testing.assert_close(out[key][..., inside], batch[key][info.perm][..., inside])
            torch.testing.assert_close(out[key][..., ~inside], batch[key][..., ~inside])
        assert info.lam == pytest.approx(1 - float(inside.float().mean()))
        only_cutmix = MixupSpec(cutmix_alpha=1.0, switch_prob=0.0)
        assert mix_batch(batch, spec=only_cutmix, num_classes=11)[1].kind == "cutmix"
        out, info = mix_batch(batch, spec=MixupSpec(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.0), num_classes=11)
        assert info.kind == "mixup" and info.box is None
        meta = batch["present"]["meta"]
        assert torch.equal(out["present"]["meta"], meta | meta[info.perm])
    no_images = {k: v for k, v in batch.items() if k not in ("derm", "clinical")}
    out, info = mix_batch(no_images, spec=MixupSpec(cutmix_alpha=1.0), num_classes=11)
    assert info.kind == "cutmix" and 0 < info.lam < 1 and torch.equal(out["meta"], batch["meta"])
