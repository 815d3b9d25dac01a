"""Evaluation: the report and its figures, Grad-CAM maps, and modality masking at inference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from train_helpers import TINY_IMAGE_ENCODER, tiny_run_config

import fusionkit as fk
from fusionkit.evaluate.gradcam import gradcam
from fusionkit.evaluate.report import evaluate_run
from fusionkit.inference.pipeline import store_run_decision
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.predict import mask_modalities
from fusionkit.train.trainer import train_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    config = RunConfig.model_validate(tiny_run_config(root / "cache", epochs=1, n_lesions=40))
    train_run(config, run_dir=root / "run", synthetic=True, progress=False, after_fit=store_run_decision)
    return root / "run"


@pytest.mark.trains
def test_report_writes_every_file_and_links_it(run_dir: Path) -> None:
    report = evaluate_run(run_dir, gradcam_lesions=2)
    text = report.read_text()
    for name in ("confusion_matrix.png", "reliability.png", "roc.png", "gate.png", "history.png", "gradcam.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(run_dir / name) as image:
            image.verify()
        assert f"]({name})" in text, name
    for name in (
        "metrics.md",
        "metrics.csv",
        "metrics.json",
        "calibration.json",
        "gate.json",
        "ablation.md",
        "predictions.csv",
    ):
        assert (run_dir / name).is_file(), name
    # the Table 5 layout: nine metric rows, the mean and every class
    table = (run_dir / "metrics.md").read_text()
    assert table.count("\n|") >= 10 and "| Metric | Mean | AKIEC |" in table
    for row in ("AUC, Sens > 80%", "Average Precision", "Dice Coefficient", "NPV"):
        assert row in table
    # the ablation has a row per masked modality
    assert all(f"without {m}" in text for m in ("D", "C", "M"))
    assert re.search(r"ECE \d\.\d{3}", text)


def _tiny_model(preset: str = "ji-adf") -> fk.FusionModel:
    torch.manual_seed(0)
    spec = fk.load_preset(preset, {"image_encoder": TINY_IMAGE_ENCODER})
    return fk.build_model(spec, metadata_width=7).eval()


def _batch(n: int = 3, size: int = 48) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "derm": torch.randn(n, 3, size, size, generator=g),
        "clinical": torch.randn(n, 3, size, size, generator=g),
        "meta": torch.randn(n, 7, generator=g),
    }


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("modality", ["derm", "clinical"])
def test_gradcam_maps_have_the_image_size_and_vary(modality: str, shared: bool) -> None:
    torch.manual_seed(0)
    spec = fk.load_preset("ji-adf", {"image_encoder": {**TINY_IMAGE_ENCODER, "shared": shared}})
    model = fk.build_model(spec, metadata_width=7).eval()
    batch = _batch()
    maps = gradcam(model, batch, modality=modality)
    assert maps.shape == (3, 48, 48)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    for cam in maps:
        assert float(cam.max() - cam.min()) > 1e-3, "a Grad-CAM map is constant"
    # the map depends on the image: changing the pixels changes it
    other = dict(batch, **{modality: batch[modality].flip(-1)})
    assert not torch.allclose(gradcam(model, other, modality=modality), maps)


@pytest.mark.parametrize("absent, branch", [(("meta",), 2), (("derm", "clinical"), 0)])
def test_masking_a_modality_zeroes_its_branch_weight(absent: tuple[str, ...], branch: int) -> None:
    model = _tiny_model()
    batch = _batch()
    with torch.no_grad():
        full = model(batch)
        masked = model(mask_modalities(batch, absent))
    assert torch.all(full.weights[:, branch] > 0)
    assert torch.all(masked.weights[:, branch] == 0)
    for out in (full, masked):
        assert torch.allclose(out.probs.sum(1), torch.ones(3), atol=1e-5)
        assert torch.allclose(out.weights.sum(1), torch.ones(3), atol=1e-5)
        assert torch.all(out.probs >= 0)
    assert not torch.allclose(full.probs, masked.probs)


def test_confident_posteriors_never_exceed_one() -> None:
    """logsumexp rounding can give exp(log P) = 1 + 1e-7; the output is clamped to a probability."""
    model = _tiny_model()
    with torch.no_grad():
        for head in model.heads.values():
            head.linear.bias.fill_(0.0)
            head.linear.bias[3] = 60.0  # every branch certain of class 3
        out = model(_batch())
    assert float(out.probs.max()) <= 1.0
    assert torch.allclose(out.probs[:, 3], torch.ones(3))
