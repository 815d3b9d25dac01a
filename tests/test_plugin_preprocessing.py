"""A plugin image encoder's declared preprocessing is what a run trains and predicts with.

The plugin (``plugin_conv`` of tests/plugin_fixture.py) declares a mean/std no timm model uses and
is installed through the ``fusionkit.components`` entry point: a fake entry point in this process
(as tests/test_registry.py does), and a real ``.dist-info`` on the path of a fresh process.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TESTS_DIR
from train_helpers import tiny_run_config, write_config

import fusionkit as fk
from fusionkit.data import MetadataEncoder, Milk10kDataset, build_transforms, make_loader, normalize_batch
from fusionkit.registry import PLUGIN_GROUP
from fusionkit.runtime.checkpoint import load_checkpoint
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.predict import predict
from fusionkit.train.trainer import train_run

pytestmark = pytest.mark.trains  # asserts on what trained (or stepped) models compute

REPO = TESTS_DIR.parent
MODEL = {
    "num_classes": 11,
    "image_size": 32,
    "image_encoder": {"kind": "plugin_conv", "out_dim": 8},
    "metadata_encoder": {"kind": "mlp", "hidden_dims": [16], "out_dim": 12},
    "fusion": {"kind": "mmfa", "attention_heads": 2, "head_dim": 4, "out_dim": 16},
    "decision": {"kind": "adf", "hidden_dim": 8},
}


def _config(cache: Path, encoder: dict | None = None) -> dict:
    raw = tiny_run_config(cache, epochs=1, n_lesions=40)
    raw["model"] = {**MODEL, "image_encoder": encoder or MODEL["image_encoder"]}
    return raw


@pytest.fixture
def plugin(monkeypatch, clean_plugin_module):
    """tests/plugin_fixture.py installed through a (fake) ``fusionkit.components`` entry point."""
    eps = [importlib.metadata.EntryPoint("fixture_plugin", "plugin_fixture", PLUGIN_GROUP)]
    real = importlib.metadata.entry_points

    def entry_points(**params):  # other groups (other libraries' plugins) are left as they are
        return eps if params.get("group") == PLUGIN_GROUP else real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert fk.load_plugins(force=True) == ["fixture_plugin"]
    import plugin_fixture

    return plugin_fixture


def test_a_plugin_encoders_declared_normalisation_is_what_the_run_trains_and_predicts_with(tmp_path, plugin):
    declared = plugin.PLUGIN_PREPROCESSING.with_size(32)  # the spec's image_size, the plugin's mean/std
    config = RunConfig.model_validate(_config(tmp_path / "cache"))
    trainer = train_run(config, run_dir=tmp_path / "run", synthetic=True, progress=False)

    # training: the transforms the run used, the batches the model saw, train.log
    assert trainer.model.preprocessing == declared
    assert trainer.data.preprocessing == declared
    assert trainer.data.train_set.transform.preprocessing == trainer.data.val_set.transform.preprocessing == declared
    raw = trainer.data.val_set.collate([0, 1])
    seen = trainer.data.to_model_batch(raw)
    mean = torch.tensor(declared.mean).view(1, 3, 1, 1)
    std = torch.tensor(declared.std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["derm"], (raw["derm"].float() / 255 - mean) / std)
    log = (tmp_path / "run" / "train.log").read_text()
    assert (
        "image preprocessing (declared by the model's image encoders): 32px, mean [0.25, 0.5, 0.75], "
        "std [0.125, 0.25, 0.5], bilinear" in log
    )

    # prediction: the reloaded model declares the same, and its transform normalises with it
    saved = RunConfig.model_validate(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))
    encoder = MetadataEncoder.load(tmp_path / "run" / "metadata_encoder.json")
    model = fk.FusionModel.from_spec(saved.model, metadata_width=encoder.metadata_width)
    load_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", model=model)
    model.eval()
    assert model.preprocessing == declared
    dataset = Milk10kDataset(
        root=tmp_path / "run" / "synthetic",
        lesion_ids=trainer.data.split.val[:6],
        encoder=encoder,
        image_size=model.image_size,
        transform=build_transforms(preprocessing=model.preprocessing, train=False, normalize=False),
    )
    pre = model.preprocessing
    preds = predict(
        model,
        make_loader(dataset, batch_size=6),
        device=torch.device("cpu"),
        batch_transform=lambda b: normalize_batch(b, mean=pre.mean, std=pre.std),
    )
    batch = dataset.collate(range(6))
    by_hand = {**batch, "derm": (batch["derm"] / 255 - mean) / std, "clinical": (batch["clinical"] / 255 - mean) / std}
    imagenet = fk.data.backbone_preprocessing("resnet18")
    guessed = normalize_batch(batch, mean=imagenet.mean, std=imagenet.std)
    with torch.no_grad():
        expected = model(by_hand).probs.numpy()
        wrong = model(guessed).probs.numpy()
    assert preds.probs == pytest.approx(expected, abs=1e-6)
    assert abs(preds.probs - wrong).max() > 1e-4  # the normalisation matters to this model


def test_an_image_encoder_that_declares_no_preprocessing_is_refused_by_name(tmp_path, plugin):
    config = RunConfig.model_validate(_config(tmp_path / "cache", {"kind": "plugin_undeclared"}))
    with pytest.raises(fk.ConfigError) as info:
        fk.build_model(config.model, metadata_width=5)
    assert str(info.value) == (
        "image encoder 'plugin_undeclared' for 'derm' (plugin_fixture.PluginUndeclaredEncoder) declares no "
        "preprocessing: give it a `preprocessing` property returning fusionkit.data.ImagePreprocessing("
        "input_size=..., mean=..., std=..., interpolation=...)"
    )


def _installed(tmp_path: Path) -> dict[str, str]:
    """An environment whose path holds tests/plugin_fixture.py and a real .dist-info naming it as an entry point."""
    site = tmp_path / "site"
    info = site / "fusionkit_fixture_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fusionkit-fixture-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\nfixture_plugin = plugin_fixture\n")
    path = os.pathsep.join([str(site), str(TESTS_DIR), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_fresh_process_finds_the_installed_plugin_and_its_declaration(tmp_path):
    env = _installed(tmp_path)
    code = (
        "import json, fusionkit as fk\n"
        f"spec = fk.ModelSpec.model_validate({MODEL!r})\n"
        "print(json.dumps(fk.build_model(spec, metadata_width=5).preprocessing.to_dict()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == (
        '{"input_size": 32, "mean": [0.25, 0.5, 0.75], "std": [0.125, 0.25, 0.5], "interpolation": "bilinear"}'
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_fusionkit_train_refuses_an_undeclared_plugin_encoder_in_one_line(tmp_path):
    env = _installed(tmp_path)
    config = write_config(tmp_path / "undeclared.yaml", _config(tmp_path / "cache", {"kind": "plugin_undeclared"}))
    done = subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", "train", str(config), "--synthetic", "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "image encoder 'plugin_undeclared' for 'derm' (plugin_fixture.PluginUndeclaredEncoder) declares no " in (
        done.stderr
    )
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing behind
