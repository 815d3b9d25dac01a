"""Issue 26 item 3 (fine-tuning recipes) and issue 23 item 4 (the image-encoder contract): layer-wise
lr decay, the backbone freeze and linear probe, gradient checkpointing, and a plugin image encoder
through Grad-CAM and the backbone learning rates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
import torch
from pydantic import PositiveInt
from torch import nn
from train_helpers import TINY_IMAGE_ENCODER, tiny_run_config

import fusionkit as fk
from fusionkit.components.contract import ImageEncoder
from fusionkit.data import ImagePreprocessing
from fusionkit.errors import ConfigError
from fusionkit.evaluate.gradcam import gradcam
from fusionkit.runtime.checkpoint import model_state
from fusionkit.runtime.config import RunConfig, TrainSpec
from fusionkit.train.param_groups import backbone_parameter_names, param_groups
from fusionkit.train.trainer import Trainer, TrainerCallback, train_run

META = 7


def _model(encoder: dict[str, Any] | None = None, *, seed: int = 0, **overrides: Any) -> fk.FusionModel:
    torch.manual_seed(seed)
    spec = fk.load_preset("ji-adf", {"image_encoder": encoder or dict(TINY_IMAGE_ENCODER), **overrides})
    return fk.build_model(spec, metadata_width=META)


def _batch(n: int = 3, size: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "derm": torch.randn(n, 3, size, size, generator=g),
        "clinical": torch.randn(n, 3, size, size, generator=g),
        "meta": torch.randn(n, META, generator=g),
    }


# -- layer-wise lr decay ----------------------------------------------------------------------------
@pytest.mark.parametrize("model_name, unit", [("test_efficientnet", "stage"), ("test_vit", "block")])
def test_layer_decay_gives_the_documented_lr_per_group(model_name: str, unit: str) -> None:
    model = _model({"model_name": model_name, "pretrained": False})
    layers = model.backbone_layers()
    assert set(layers) == {"derm", "clinical"}
    depth = len(layers["derm"])
    timm_model = model.image_stream.encoders["derm"].backbone
    # per stage for a CNN, per block for a ViT (the final norm/head conv joins the last): stem + one each
    assert depth == len(timm_model.blocks) + 1, unit
    lr, backbone_lr, decay = 1e-3, 2e-4, 0.65
    groups = param_groups(
        model, lr=lr, weight_decay=0.05, backbone_lr=backbone_lr, layer_decay=decay, no_decay_norm_bias=True
    )
    by_name = {g["name"]: g for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    for k in range(depth):
        expected = backbone_lr * decay ** (depth - k)  # lr * d ** (L - k), exact by construction
        members = {n for key in ("derm", "clinical") for n in layers[key][k]}
        for suffix, weight_decay in (("", 0.05), ("_no_decay", 0.0)):
            group = by_name[f"backbone_layer{k}{suffix}"]
            assert (group["lr"], group["weight_decay"]) == (expected, weight_decay)
            assert {names[id(p)] for p in group["params"]} <= members
        grouped = {names[id(p)] for s in ("", "_no_decay") for p in by_name[f"backbone_layer{k}{s}"]["params"]}
        assert grouped == members
    assert by_name["rest"]["lr"] == lr and by_name["rest_no_decay"]["lr"] == lr
    assert len(by_name) == 2 * depth + 2
    assert sum(len(g["params"]) for g in groups) == len(names)
    # without backbone_lr the decay starts from train.lr; the stem gets d ** L
    plain = {g["name"]: g["lr"] for g in param_groups(model, lr=lr, weight_decay=0.0, layer_decay=decay)}
    assert plain["backbone_layer0"] == lr * decay**depth and plain[f"backbone_layer{depth - 1}"] == lr * decay
    # the trainer builds exactly these groups from train.layer_decay
    assert TrainSpec(layer_decay=decay).layer_decay == decay


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"layer_decay": 0.0}, "greater than 0"),
        ({"layer_decay": 1.5}, "less than or equal to 1"),
        ({"freeze_backbone_epochs": -1}, "greater than or equal to 0"),
        ({"freeze_backbone_epochs": 100_001}, "less than or equal to 100000"),
        ({"linear_probe": True, "freeze_backbone_epochs": 2}, "leave freeze_backbone_epochs at 0"),
        ({"freeze_backbone_epochs": 2, "step_mode": "cuda_graph"}, "captured CUDA graph cannot follow"),
        ({"linear_probe": True, "step_mode": "cuda_graph"}, "not supported with step_mode cuda_graph"),
    ],
)
def test_recipe_fields_are_bounded(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        TrainSpec(**fields)


# -- a plugin image encoder through the contract --------------------------------------------------
TINY_PREPROCESSING = ImagePreprocessing(input_size=48, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class TinyConvSpec(fk.specs.ImageEncoderSpec):
    """A two-layer conv net with a fresh projection (not a timm model)."""

    kind: Literal["tiny_conv"] = "tiny_conv"
    out_dim: PositiveInt = 6


class TinyConvEncoder(ImageEncoder):
    """``body`` is the (pretrained, say) backbone in two layers; ``proj`` is freshly initialised."""

    def __init__(self, *, out_dim: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2), nn.ReLU())
        self.proj = nn.Linear(5, out_dim)
        self.out_dim = out_dim

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return TINY_PREPROCESSING

    def backbone_layers(self) -> list[list[str]]:
        return [["body.0.weight", "body.0.bias"], ["body.2.weight", "body.2.bias"]]

    def gradcam_layer(self) -> nn.Module:
        return self.body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(images).mean(dim=(2, 3)))


class PlainSpec(fk.specs.ImageEncoderSpec):
    """An encoder that does not subclass the contract: the defaults apply."""

    kind: Literal["plain_conv"] = "plain_conv"


class PlainEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.out_dim = 4

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return TINY_PREPROCESSING

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).mean(dim=(2, 3))


@pytest.fixture
def plugin_encoders(registrations) -> None:
    fk.register("image_encoder", TinyConvSpec, TinyConvEncoder)
    fk.register("image_encoder", PlainSpec, PlainEncoder)


@pytest.mark.parametrize("shared", [False, True])
def test_a_plugin_encoder_gets_gradcam_and_backbone_learning_rates(plugin_encoders, shared: bool) -> None:
    model = _model({"kind": "tiny_conv", "shared": shared}).eval()
    batch = _batch()
    for modality in ("derm", "clinical"):
        maps = gradcam(model, batch, modality=modality)
        assert maps.shape == (3, 48, 48) and float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
        assert all(float(cam.max() - cam.min()) > 1e-3 for cam in maps)
        other = dict(batch, **{modality: batch[modality].flip(-1)})
        assert not torch.allclose(gradcam(model, other, modality=modality), maps)
    # the backbone is what the encoder declares: its body, not its fresh projection
    keys = ["shared"] if shared else ["derm", "clinical"]
    body = {f"image_stream.encoders.{k}.body.{i}.{w}" for k in keys for i in (0, 2) for w in ("weight", "bias")}
    assert backbone_parameter_names(model) == body
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.0, backbone_lr=1e-5)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["backbone"]["params"]} == body and groups["backbone"]["lr"] == 1e-5
    assert any(names[id(p)].endswith("proj.weight") for p in groups["rest"]["params"])
    decayed = {g["name"]: g["lr"] for g in param_groups(model, lr=1e-3, weight_decay=0.0, layer_decay=0.5)}
    assert decayed == {"backbone_layer0": 1e-3 * 0.5**2, "backbone_layer1": 1e-3 * 0.5, "rest": 1e-3}
    assert model.spec.image_encoder.display_name == "tiny_conv"  # what the report names


def test_an_encoder_outside_the_contract_gets_the_defaults_and_one_line_refusals(plugin_encoders) -> None:
    model = _model({"kind": "plain_conv"})
    assert model.backbone_layers() == {
        m: [[f"image_stream.encoders.{m}.conv.weight", f"image_stream.encoders.{m}.conv.bias"]]
        for m in ("derm", "clinical")
    }
    with pytest.raises(ConfigError, match=r"image encoder 'derm' \(.*PlainEncoder\) names no Grad-CAM layer") as info:
        gradcam(model, _batch(), modality="derm")
    assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ConfigError, match=r"PlainEncoder\) has no gradient checkpointing"):
        model.set_grad_checkpointing()
    assert _model().spec.image_encoder.display_name == TINY_IMAGE_ENCODER["model_name"]


# -- gradient checkpointing -------------------------------------------------------------------------
def test_grad_checkpointing_recomputes_and_gives_the_same_outputs_and_gradients() -> None:
    plain, checkpointed = _model(seed=1).train(), _model(seed=1).train()
    checkpointed.set_grad_checkpointing()
    batch = _batch(n=4, size=32)
    results = []
    for model in (plain, checkpointed):
        calls = []
        block = model.image_stream.encoders["derm"].backbone.blocks[1][0]
        original = block.forward  # counted through forward itself: the recomputation runs no hooks

        def counted(x: torch.Tensor, original=original, calls=calls) -> torch.Tensor:
            calls.append(1)
            return original(x)

        block.forward = counted
        torch.manual_seed(5)
        out = model(batch)
        out.log_probs[:, 0].sum().backward()
        del block.forward
        results.append((out, len(calls), {n: p.grad for n, p in model.named_parameters()}))
    (out_a, calls_a, grads_a), (out_b, calls_b, grads_b) = results
    assert (calls_a, calls_b) == (1, 2)  # checkpointing ran the block again in the backward pass
    torch.testing.assert_close(out_b.log_probs, out_a.log_probs)
    assert grads_a.keys() == grads_b.keys() and all(grads_a[n] is not None for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], msg=name)


# -- the backbone freeze, resumable, and the linear probe ------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("recipes-cache")


def _encoder_state(model: fk.FusionModel) -> dict[str, torch.Tensor]:
    """Every tensor of the image encoders: weights and BatchNorm statistics."""
    return {k: v.clone() for k, v in model_state(model).items() if k.startswith("image_stream.encoders.")}


def _heads_state(model: fk.FusionModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model_state(model).items() if k.startswith("heads.")}


class _Snapshots(TrainerCallback):
    """The encoders and heads after each epoch; interrupts after ``stop_after`` batches, if given."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.states: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        self.stop_after = stop_after
        self.batches = 0

    def on_batch_end(self, trainer: Trainer, *, epoch: int, batch_index: int, loss: torch.Tensor) -> None:
        self.batches += 1
        if self.batches == self.stop_after:
            trainer.interrupt()

    def on_epoch_end(self, trainer: Trainer, *, record: Any, metrics: dict[str, Any]) -> None:
        self.states.append((_encoder_state(trainer.model), _heads_state(trainer.model)))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.trains
def test_freeze_trains_only_the_heads_then_unfreezes_and_resumes_mid_freeze_exactly(
    tmp_path: Path, cache_dir: Path
) -> None:
    config = RunConfig.model_validate(
        tiny_run_config(cache_dir, epochs=3, n_lesions=24, freeze_backbone_epochs=2, max_batches_per_epoch=2)
    )
    snapshots = _Snapshots()
    full = Trainer(config, run_dir=tmp_path / "full", synthetic=True, progress=False, callbacks=[snapshots])
    start_encoders, start_heads = _encoder_state(full.model), _heads_state(full.model)
    try:
        full.fit()
    finally:
        full.close()
    (enc1, heads1), (enc2, heads2), (enc3, _) = snapshots.states
    # the frozen epochs: every encoder tensor (BatchNorm statistics too) bit-identical, the heads trained
    assert _same(enc1, start_encoders) and _same(enc2, start_encoders)
    assert not _same(heads1, start_heads) and not _same(heads2, heads1)
    # the third epoch unfreezes: the backbone weights and statistics move
    assert not _same(enc3, start_encoders)
    assert all(p.requires_grad for p in full.model.parameters())
    # interrupted after the third batch (in epoch 2 of 3, still frozen: a freeze counted from the start of
    # the process rather than from the epoch number would unfreeze a batch early), then resumed
    cut = Trainer(config, run_dir=tmp_path / "cut", synthetic=True, progress=False, callbacks=[_Snapshots(3)])
    with pytest.raises(KeyboardInterrupt):
        try:
            cut.fit()
        finally:
            cut.close()
    resumed = train_run(config, run_dir=tmp_path / "cut", synthetic=True, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert _same(model_state(resumed.model), model_state(full.model))
    assert [(r["val_loss"], r["lr"]) for r in resumed.history] == [(r["val_loss"], r["lr"]) for r in full.history]


@pytest.mark.trains
def test_linear_probe_keeps_the_backbone_fixed_for_the_whole_run(tmp_path: Path, cache_dir: Path) -> None:
    config = RunConfig.model_validate(
        tiny_run_config(cache_dir, epochs=2, n_lesions=24, linear_probe=True, max_batches_per_epoch=2, layer_decay=0.5)
    )
    snapshots = _Snapshots()
    trainer = Trainer(config, run_dir=tmp_path / "probe", synthetic=True, progress=False, callbacks=[snapshots])
    # train.layer_decay reaches the optimizer: one group per backbone layer, the lr as documented
    depth = len(trainer.model.backbone_layers()["derm"])
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {**{f"backbone_layer{k}": 3e-3 * 0.5 ** (depth - k) for k in range(depth)}, "rest": 3e-3}
    start_encoders, start_heads = _encoder_state(trainer.model), _heads_state(trainer.model)
    try:
        trainer.fit()
    finally:
        trainer.close()
    for encoders, heads in snapshots.states:
        assert _same(encoders, start_encoders) and not _same(heads, start_heads)
    backbone = backbone_parameter_names(trainer.model)
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if n in backbone)
    assert all(not trainer.optimizer.state.get(p) for n, p in trainer.model.named_parameters() if n in backbone)


@pytest.mark.trains
def test_grad_checkpointing_trains_through_the_trainer(tmp_path: Path, cache_dir: Path) -> None:
    config = RunConfig.model_validate(
        tiny_run_config(cache_dir, epochs=1, n_lesions=24, grad_checkpointing=True, max_batches_per_epoch=2)
    )
    trainer = train_run(config, run_dir=tmp_path / "ckpt", synthetic=True, progress=False)
    assert all(encoder.backbone.grad_checkpointing for encoder in trainer.model.image_stream.encoders.values())
    assert math.isfinite(trainer.history[0]["train_loss"])
