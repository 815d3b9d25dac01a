"""fusionkit.evaluate.plots: every figure is a valid PNG, also with a class without samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fusionkit.evaluate.plots import (
    gate_weight_table,
    plot_confusion_matrix,
    plot_gate_weights,
    plot_reliability_diagram,
    plot_roc_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["AKIEC", "BCC", "BEN_OTH", "MEL"]  # BEN_OTH (index 2) never occurs in y_true


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 80
    y_true = rng.choice([0, 1, 3], size=n)
    logits = rng.normal(size=(n, 4)) + 2.0 * np.eye(4)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = probs.argmax(axis=1)
    weights = rng.dirichlet([2.0, 1.0, 1.0], size=n)
    return y_true, y_pred, probs, weights


def assert_png(path, min_size=(200, 200)):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def _no_pyplot_figures():
    import matplotlib.pyplot as plt

    return plt.get_fignums() == []


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix(tmp_path, data, normalize):
    y_true, y_pred, _, _ = data
    out = plot_confusion_matrix(y_true, y_pred, NAMES, tmp_path / "cm.png", normalize=normalize)
    assert out == tmp_path / "cm.png"
    assert_png(out)


def test_reliability_diagram(tmp_path, data):
    y_true, _, probs, _ = data
    assert_png(plot_reliability_diagram(probs, y_true, tmp_path / "sub" / "rel.png", n_bins=10))


def test_roc_curves_skip_a_class_without_positives(tmp_path, data):
    y_true, _, probs, _ = data
    assert_png(plot_roc_curves(y_true, probs, NAMES, tmp_path / "roc.png"))


def test_gate_weights(tmp_path, data):
    y_true, y_pred, _, weights = data
    assert_png(plot_gate_weights(weights, y_true, y_pred, NAMES, tmp_path / "gates.png"))
    assert _no_pyplot_figures()


def test_gate_weights_all_correct_tiny_set(tmp_path):
    weights = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    y = np.array([0, 3])
    assert_png(plot_gate_weights(weights, y, y, NAMES, tmp_path / "g.png"))
    assert_png(plot_confusion_matrix(y, y, NAMES, tmp_path / "c.png"))


def test_gate_weight_table(data):
    y_true, y_pred, _, weights = data
    table = gate_weight_table(weights, y_true, y_pred, NAMES)
    assert table["branches"] == ["alpha_I", "alpha_IM", "alpha_M"]
    assert table["per_class"]["BEN_OTH"]["count"] == 0
    assert math.isnan(table["per_class"]["BEN_OTH"]["alpha_I"])
    mel = y_true == 3
    assert table["per_class"]["MEL"]["count"] == int(mel.sum())
    assert table["per_class"]["MEL"]["alpha_M"] == pytest.approx(weights[mel, 2].mean())
    correct = y_true == y_pred
    assert table["correct"]["count"] + table["wrong"]["count"] == len(y_true)
    assert table["wrong"]["alpha_IM"] == pytest.approx(weights[~correct, 1].mean())
    assert table["all"]["alpha_I"] == pytest.approx(weights[:, 0].mean())
    assert all(isinstance(v, float) for v in table["correct"].values() if not isinstance(v, int))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: plot_gate_weights(np.ones((3, 2)), np.zeros(3, int), np.zeros(3, int), NAMES, p), r"\(n, 3\)"),
        (lambda p: plot_confusion_matrix(np.array([0, 9]), np.array([0, 1]), NAMES, p), "outside"),
        (lambda p: plot_confusion_matrix(np.array([0, 1]), np.array([0]), NAMES, p), "different"),
        (lambda p: plot_roc_curves(np.array([0, 1]), np.full((2, 4), 2.0), NAMES, p), r"\[0, 1\]"),
    ],
)
def test_rejects_bad_inputs(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
