"""The ``open_clip`` image encoder and the timm encoder's foreign-weights options (issue 26).

Offline, random weights: a tiny CLIP architecture is registered through open_clip's own config
registry (``open_clip.add_model_config``), so every tower here builds and runs in milliseconds on
a CPU. What open_clip itself computes (``CLIP.encode_image``, ``create_model(force_image_size=)``)
is the reference the encoder is held to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from tiny_open_clip import TINY_OPEN_CLIP, TINY_OPEN_CLIP_CONFIG, write_config
from train_helpers import tiny_run_config

import fusionkit as fk
from fusionkit.components.image_encoders import TimmImageEncoder
from fusionkit.components.open_clip_encoder import OpenClipImageEncoder, OpenClipImageEncoderSpec
from fusionkit.errors import ConfigError, MissingExtraError, PretrainedWeightsError
from fusionkit.evaluate.gradcam import gradcam
from fusionkit.inference.pipeline import inference_spec
from fusionkit.runtime.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_OPEN_CLIP
WIDE = "fk-tiny-vit-wide"  # the same keys as TINY, other shapes
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    """TINY and WIDE registered in open_clip's model-config registry (as a user's plugin would)."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    write_config(folder)
    wide = json.loads(json.dumps(TINY_OPEN_CLIP_CONFIG))
    wide["vision_cfg"]["width"] = 48
    write_config(folder, WIDE, wide)
    open_clip.add_model_config(folder)
    return folder


@pytest.fixture(scope="module")
def clip(configs) -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(TINY).eval()


@pytest.fixture(scope="module")
def files(clip, tmp_path_factory) -> dict[str, Path]:
    """The same weights saved as a whole CLIP model and as the vision tower, .pth and .safetensors."""
    folder = tmp_path_factory.mktemp("weights")
    whole = {k: v.contiguous() for k, v in clip.state_dict().items()}
    visual = {k: v.contiguous() for k, v in clip.visual.state_dict().items()}
    paths = {name: folder / name for name in ("whole.pth", "visual.pth", "whole.safetensors", "ddp.pth")}
    torch.save(whole, paths["whole.pth"])
    torch.save(visual, paths["visual.pth"])
    save_file(whole, str(paths["whole.safetensors"]))
    torch.save({"state_dict": {f"module.{k}": v for k, v in whole.items()}}, paths["ddp.pth"])
    return paths


def _images(size: int = 32, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# -- features ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["whole.pth", "visual.pth", "whole.safetensors", "ddp.pth"])
def test_pooled_features_equal_open_clips_encode_image(clip, files, name):
    encoder = OpenClipImageEncoder(model_name=TINY, weights_file=files[name]).eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(encoder(x), clip.encode_image(x))
    assert encoder.out_dim == 16
    assert set(encoder.state_dict()) == {f"visual.{k}" for k in clip.visual.state_dict()}  # no text tower


def test_pre_projection_features_are_the_token_the_projection_maps(clip, files):
    encoder = OpenClipImageEncoder(model_name=TINY, weights_file=files["whole.pth"], features="pre_projection").eval()
    x = _images()
    with torch.no_grad():
        features = encoder(x)
        torch.testing.assert_close(features @ clip.visual.proj, clip.encode_image(x))
    assert encoder.out_dim == features.shape[1] == 32  # the tower's width, not embed_dim


def test_preprocessing_comes_from_open_clips_config_and_image_size(configs, clip, files):
    encoder = OpenClipImageEncoder(model_name=TINY)
    assert encoder.preprocessing == fk.data.ImagePreprocessing(
        input_size=32, mean=OPENAI_MEAN, std=(0.26862954, 0.26130258, 0.27577711), interpolation="bicubic"
    )
    bigger = OpenClipImageEncoder(model_name=TINY, weights_file=files["whole.pth"], image_size=48).eval()
    assert bigger.preprocessing.input_size == 48
    reference = open_clip.create_model(TINY, pretrained=str(files["whole.pth"]), force_image_size=48).eval()
    x = _images(48)
    with torch.no_grad():  # the position embedding resized as open_clip resizes it
        assert torch.equal(bigger(x), reference.encode_image(x))


def test_a_tags_preprocessing_survives_the_rebuild_of_a_saved_model(configs, monkeypatch):
    """A saved model is rebuilt without weights but keeps its tag, and so the tag's preprocessing
    (ViT-B-16-SigLIP's webli tag normalises with 0.5, not open_clip's default)."""
    overrides = {"kind": "open_clip", "model_name": "ViT-B-16-SigLIP", "pretrained": "webli"}
    spec = fk.load_preset("ji-adf", {"image_size": 224, "image_encoder": overrides})
    rebuilt = inference_spec(RunConfig.model_validate({"model": spec.model_dump()})).image_encoder
    assert (rebuilt.pretrained, rebuilt.load_weights, rebuilt.weights_file) == ("webli", False, None)
    webli = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    assert webli["mean"] == (0.5, 0.5, 0.5)
    # the tiny tower stands in for the SigLIP one (same code path, milliseconds instead of seconds)
    monkeypatch.setattr(
        open_clip, "get_pretrained_cfg", lambda name, tag: webli if (name, tag) == (TINY, "webli") else {}
    )
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda *a, **k: pytest.fail("downloaded"))
    encoder = OpenClipImageEncoder(model_name=TINY, pretrained="webli", load_weights=False)
    assert encoder.preprocessing == fk.data.ImagePreprocessing(
        input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
    )


# -- the ji-adf preset -----------------------------------------------------------------------
@pytest.mark.parametrize("shared", [True, False])
def test_builds_as_the_image_encoder_of_ji_adf(configs, files, shared):
    spec = fk.load_preset(
        "ji-adf",
        {
            "image_size": 32,
            "image_encoder": {
                "kind": "open_clip", "model_name": TINY, "pretrained": False,
                "weights_file": str(files["visual.pth"]), "shared": shared,
            },
        },
    )  # fmt: skip
    model = fk.build_model(spec, metadata_width=7)
    assert model.preprocessing.input_size == 32 and model.preprocessing.mean == OPENAI_MEAN
    encoders = [m for m in model.modules() if isinstance(m, OpenClipImageEncoder)]
    assert len(encoders) == (1 if shared else 2)
    batch = {"derm": _images(), "clinical": _images(), "meta": torch.zeros(3, 7)}
    out = model.eval()(batch)
    assert out.log_probs.shape == (3, 11)


# -- errors --------------------------------------------------------------------------------
def _error(**kwargs) -> str:
    with pytest.raises(PretrainedWeightsError) as info:
        OpenClipImageEncoder(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_wrong_file_is_one_line_naming_the_file_and_the_keys(configs, files, tmp_path):
    timm_file = tmp_path / "efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), timm_file)
    message = _error(model_name=TINY, weights_file=timm_file)
    assert message.startswith(f"{timm_file}: weights do not fit the open_clip VisionTransformer of '{TINY}' (")
    assert "missing keys, e.g. ['class_embedding', 'conv1.weight', 'ln_post.bias']" in message
    assert "; 86 unexpected, e.g. ['blocks.0.0.bn1.bias'," in message
    # the same keys, other shapes: the wide tower's file
    torch.save(open_clip.create_model(WIDE).visual.state_dict(), tmp_path / "wide.pth")
    message = _error(model_name=TINY, weights_file=tmp_path / "wide.pth")
    assert message.startswith(f"{tmp_path / 'wide.pth'}: weights do not fit: Error(s) in loading state_dict")
    assert "size mismatch for class_embedding" in message
    assert (
        _error(model_name=TINY, weights_file=tmp_path / "none.pth")
        == f"{tmp_path / 'none.pth'}: weights file not found"
    )


def test_spec_refuses_unknown_models_and_tags_by_name(configs):
    def error(**kwargs) -> str:
        with pytest.raises(ValidationError) as info:
            OpenClipImageEncoderSpec(**kwargs)
        return info.value.errors()[0]["msg"]

    assert "open_clip has no model 'ViT-Q-99'" in error(model_name="ViT-Q-99")
    assert "open_clip model 'ViT-B-16' has no pretrained tag 'nope'; its tags: openai," in error(
        model_name="ViT-B-16", pretrained="nope"
    )
    assert "pretrained: name an open_clip tag of 'ViT-B-16' (openai," in error(model_name="ViT-B-16", pretrained=True)
    assert "pretrained must be true or false for hf-hub:org/name" in error(model_name="hf-hub:org/name", pretrained="x")
    assert "hf-hub: needs a repository id" in error(model_name="hf-hub:")
    assert OpenClipImageEncoderSpec(model_name=TINY).features == "pooled"


def test_an_unreachable_hub_model_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _error(model_name="hf-hub:nobody/no-such-dermlip", pretrained=True)
    assert message.startswith("cannot load the config of 'hf-hub:nobody/no-such-dermlip' (HF_HUB_OFFLINE=1 is set): ")
    assert message.endswith("; set pretrained: false or give weights_file")
    message = _error(model_name="ViT-B-16", pretrained="openai")  # not cached, offline: before building the tower
    assert message.startswith("cannot load the pretrained weights of 'ViT-B-16' (HF_HUB_OFFLINE=1 is set): ")


def test_without_the_clip_extra_the_encoder_is_refused_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    with pytest.raises(MissingExtraError) as info:
        OpenClipImageEncoderSpec(model_name="ViT-B-16")
    assert str(info.value) == ("the open_clip image encoder needs the clip extra: pip install 'jiadf-fusion[clip]'")


def test_images_of_another_size_are_one_line_naming_both_sizes(configs):
    encoder = OpenClipImageEncoder(model_name=TINY)
    with pytest.raises(ConfigError) as info:
        encoder(torch.zeros(1, 3, 48, 48))
    assert str(info.value) == (
        f"the open_clip tower '{TINY}' is built for 32x32 images, got 48x48: "
        "set the model's image_size: 32, or the encoder's image_size to 48"
    )


def test_an_openai_tag_builds_quick_gelu_as_its_weights_were_trained(monkeypatch, configs):
    """ViT-B-16's openai tag says quick_gelu; the tiny tower stands in for ViT-B-16 (same code path)."""
    openai = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert openai["quick_gelu"] is True
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: openai if tag == "openai" else {})
    quick = OpenClipImageEncoder(model_name=TINY, pretrained="openai", load_weights=False)
    plain = OpenClipImageEncoder(model_name=TINY)
    acts = lambda m: {type(a).__name__ for a in m.modules() if "GELU" in type(a).__name__}  # noqa: E731
    assert acts(quick) == {"QuickGELU"} and acts(plain) == {"GELU"}


def test_pre_projection_needs_a_projection(configs):
    with pytest.raises(ConfigError, match="pre_projection needs a ViT tower with a projection"):
        OpenClipImageEncoder(model_name="RN50", features="pre_projection")


# -- timm ViTs with foreign weights ----------------------------------------------------------
def _vit_state(**kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return timm.create_model("test_vit", num_classes=0, **kwargs).state_dict()


def test_weights_prefix_strips_a_prefix_and_drops_the_rest(tmp_path):
    state = _vit_state()
    path = tmp_path / "panderm.pth"
    checkpoint = {f"visual.{k}": v for k, v in state.items()} | {
        "text.proj": torch.zeros(2),
        "logit_scale": torch.ones(()),
    }
    torch.save({"state_dict": checkpoint}, path)
    encoder = TimmImageEncoder(model_name="test_vit", weights_file=path, weights_prefix="visual.")
    for key, value in state.items():
        assert torch.equal(encoder.backbone.state_dict()[key], value), key
    with pytest.raises(PretrainedWeightsError) as info:
        TimmImageEncoder(model_name="test_vit", weights_file=path, weights_prefix="module.")
    assert str(info.value) == (
        f"{path}: no key starts with weights_prefix 'module.' "
        f"({len(checkpoint)} keys, e.g. ['logit_scale', 'text.proj', 'visual.blocks.0.attn.proj.bias'])"
    )
    with pytest.raises(PretrainedWeightsError) as info:  # without the prefix: nothing fits
        TimmImageEncoder(model_name="test_vit", weights_file=path)
    assert str(info.value).endswith("unexpected, e.g. ['logit_scale', 'text.proj', 'visual.blocks.0.attn.proj.bias'])")
    with pytest.raises(ValidationError, match="weights_prefix"):
        fk.specs.TimmImageEncoderSpec(model_name="test_vit", weights_prefix="")


def test_img_size_builds_a_vit_whose_pos_embed_is_resampled_by_timm(tmp_path):
    state = _vit_state()  # native 160 px: a 10 x 10 grid of 16 px patches
    path = tmp_path / "vit.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(path))
    encoder = TimmImageEncoder(model_name="test_vit", weights_file=path, weights_prefix="module.", img_size=64)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(4, 4), old_size=(10, 10), num_prefix_tokens=1)
    assert encoder.backbone.pos_embed.shape == (1, 17, 64)
    assert torch.equal(encoder.backbone.pos_embed.detach(), expected)
    assert torch.equal(encoder.backbone.patch_embed.proj.weight.detach(), state["patch_embed.proj.weight"])
    assert encoder.preprocessing.input_size == 64 and encoder(torch.zeros(2, 3, 64, 64)).shape == (2, encoder.out_dim)
    spec = fk.load_preset(
        "ji-adf", {"image_size": 64, "image_encoder": {"model_name": "test_vit", "pretrained": False, "img_size": 64}}
    )
    assert fk.build_model(spec, metadata_width=7).preprocessing.input_size == 64


def test_img_size_on_a_model_without_one_is_one_line():
    with pytest.raises(ConfigError) as info:
        TimmImageEncoder(model_name="test_efficientnet", img_size=64)
    assert str(info.value) == (
        "timm model 'test_efficientnet' takes no img_size (only models with a fixed input grid, such as ViTs, do): "
        "leave img_size out"
    )


# -- Grad-CAM over ViT tokens -----------------------------------------------------------------
@pytest.mark.parametrize(
    "encoder",
    [
        {"kind": "open_clip", "model_name": TINY, "shared": True},
        {"model_name": "test_vit", "pretrained": False, "img_size": 32},
    ],
    ids=["open_clip", "timm_vit"],
)
def test_gradcam_maps_a_vits_patch_tokens(configs, encoder):
    torch.manual_seed(0)
    model = fk.build_model(
        fk.load_preset("ji-adf", {"image_size": 32, "image_encoder": encoder}), metadata_width=7
    ).eval()
    batch = {"derm": _images(), "clinical": _images().flip(-1), "meta": torch.zeros(3, 7)}
    maps = gradcam(model, batch, modality="derm")
    assert maps.shape == (3, 32, 32) and float(maps.max()) == pytest.approx(1.0)
    assert all(float(cam.max() - cam.min()) > 1e-3 for cam in maps)
    other = dict(batch, derm=batch["derm"].flip(-2))
    assert not torch.allclose(gradcam(model, other, modality="derm"), maps)


# -- end to end: fusionkit train, then save and reload -----------------------------------------
_TRAIN = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
    "from fusionkit.cli import main; sys.argv[0] = 'fusionkit'; main()"
)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.trains
def test_fusionkit_train_fits_an_open_clip_tower_and_the_pipeline_round_trips(configs, files, tmp_path):
    config = tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=40)
    config["model"]["overrides"]["image_encoder"] = {
        "kind": "open_clip", "model_name": TINY, "pretrained": False, "weights_file": str(files["whole.pth"]),
    }  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(configs), "train", str(tmp_path / "run.yaml"), "--synthetic",
         "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pipe = fk.FusionPipeline.from_run(tmp_path / "run", device="cpu")
    assert pipe.preprocessing.mean == OPENAI_MEAN and pipe.preprocessing.input_size == 32
    trained = [m for m in pipe.model.modules() if isinstance(m, OpenClipImageEncoder)]
    start = OpenClipImageEncoder(model_name=TINY, weights_file=files["whole.pth"])
    assert len(trained) == 2 and not torch.equal(trained[0].visual.proj, start.visual.proj)  # the tower trained
    saved = pipe.save(tmp_path / "saved")
    files["whole.pth"].rename(files["whole.pth"].with_suffix(".gone"))  # the rebuild never reads it
    try:
        loaded = fk.FusionPipeline.from_pretrained(saved, device="cpu")
    finally:
        files["whole.pth"].with_suffix(".gone").rename(files["whole.pth"])
    for key, value in pipe.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert loaded.preprocessing == pipe.preprocessing
    a = pipe.predict_split(tmp_path / "run" / "synthetic", "Training")
    b = loaded.predict_split(tmp_path / "run" / "synthetic", "Training")
    assert torch.equal(torch.as_tensor(a.probs), torch.as_tensor(b.probs))


def test_an_unreachable_hub_is_found_in_seconds_and_is_one_line(monkeypatch):
    """Online but the hub cannot be reached and nothing is cached: one short probe, not a minute of retries."""
    import socket

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: asked.append((repo, name)))

    def refuse(address, timeout=None):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    message = _error(model_name="hf-hub:nobody/dermlip", pretrained=True)
    assert message == (
        "cannot load the config of 'hf-hub:nobody/dermlip': the hub huggingface.co:443 cannot be reached "
        "(refused); weights not in the local cache"
    )
    assert asked == [("nobody/dermlip", "open_clip_config.json")]
    asked.clear()
    message = _error(model_name="ViT-B-16", pretrained="openai")
    assert message.startswith("cannot load pretrained weights for 'ViT-B-16': the hub huggingface.co:443")
    assert asked == [
        ("timm/vit_base_patch16_clip_224.openai", n)
        for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    ]


# -- the image-encoder contract's optional methods -------------------------------------------
def test_backbone_layers_run_from_the_patch_embedding_through_each_block(configs):
    encoder = OpenClipImageEncoder(model_name=TINY)
    layers = encoder.backbone_layers()
    names = [name for name, _ in encoder.named_parameters()]
    assert sorted(n for group in layers for n in group) == sorted(names)  # every parameter, once
    assert len(layers) == 3  # the stem, then one per block (2), the final norm and projection with the last
    assert set(layers[0]) == {
        "visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight",
        "visual.ln_pre.weight", "visual.ln_pre.bias",
    }  # fmt: skip
    assert all(n.startswith("visual.transformer.resblocks.0.") for n in layers[1])
    assert {"visual.proj", "visual.ln_post.weight"} <= set(layers[2])
    assert OpenClipImageEncoderSpec(model_name=TINY, pretrained=False).display_name == TINY


def test_grad_checkpointing_keeps_outputs_and_gradients(configs, files):
    x = _images()
    results = []
    for enable in (False, True):
        encoder = OpenClipImageEncoder(model_name=TINY, weights_file=files["whole.pth"])
        encoder.set_grad_checkpointing(enable)
        out = encoder(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in encoder.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)
    with pytest.raises(NotImplementedError, match="ModifiedResNet has no gradient checkpointing"):
        OpenClipImageEncoder(model_name="RN50").set_grad_checkpointing(True)
