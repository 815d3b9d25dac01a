"""fusionkit.evaluate.tables: Table 5 layout and ablation tables from isic_metrics output."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from fusionkit.evaluate.tables import TABLE5_ROWS, ablation_table, table5_markdown, write_table5
from fusionkit.metrics import isic_metrics

NAMES = ["AKIEC", "BCC", "MEL"]


@pytest.fixture(scope="module")
def metrics():
    y = np.array([0, 1, 1, 0, 1, 1])  # MEL has no samples: NaN AUC
    probs = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2], [0.1, 0.7, 0.2], [0.05, 0.9, 0.05]]
    )
    return isic_metrics(y, probs, NAMES)


def test_markdown_layout(metrics):
    lines = table5_markdown(metrics).splitlines()
    assert lines[0] == "| Metric | Mean | AKIEC | BCC | MEL |"
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: |"
    assert [line.split(" | ")[0][2:] for line in lines[2:-2]] == [label for _, label in TABLE5_ROWS]
    # what "Accuracy" is, with the multiclass (4 of 6 argmax right) and balanced (1/2, 3/4) ones
    assert lines[-2:] == [
        "",
        "Accuracy (the official ISIC definition) is the mean over classes of each class's one-vs-rest "
        "accuracy, not the share of lesions classified correctly: multiclass accuracy 0.667, "
        "balanced accuracy 0.625.",
    ]
    assert metrics["macro"]["multiclass_accuracy"] == pytest.approx(4 / 6)
    auc = lines[2].split(" | ")
    assert auc[1] == f"{metrics['macro']['auc']:.3f}"
    assert auc[4] == "n/a |"  # MEL: no positives


def test_write_table5(tmp_path, metrics):
    paths = write_table5(metrics, tmp_path / "out", stem="test")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.csv", "test.json", "test.md"]
    assert paths["md"].read_text() == table5_markdown(metrics)
    with paths["csv"].open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Metric", "Mean", *NAMES]
    dice = dict(zip(rows[0], rows[7], strict=True))
    assert dice["Metric"] == "Dice Coefficient"
    assert float(dice["BCC"]) == metrics["per_class"]["dice"]["BCC"]  # full precision
    assert rows[1][4] == ""  # NaN AUC of MEL
    doc = json.loads(paths["json"].read_text())
    assert doc["columns"] == ["Mean", *NAMES]
    assert doc["rows"][1]["metric"] == "AUC, Sens > 80%"
    assert doc["rows"][0]["values"]["MEL"] is None
    assert doc["rows"][6]["values"]["Mean"] == metrics["macro"]["dice"]
    assert doc["metrics"]["empty_classes"] == ["MEL"]
    assert doc["metrics"]["macro"]["balanced_accuracy"] == metrics["macro"]["balanced_accuracy"]


def test_write_table5_rejects_other_dicts(tmp_path):
    with pytest.raises(ValueError, match="isic_metrics"):
        write_table5({"macro": {}}, tmp_path)


def test_ablation_table(metrics):
    other = {key: value - 0.1 for key, value in metrics["macro"].items()}
    other["dice"] = math.nan
    text = ablation_table({"full": metrics, "no | meta": other})
    lines = text.splitlines()
    assert lines[0].startswith("| Run | AUC | AUC, Sens > 80% | Average Precision |")
    assert lines[0].endswith("| Balanced Accuracy |")
    assert len(lines) == 4
    full, masked = lines[2].split(" | "), lines[3].split(" | ")
    assert full[1] == f"**{metrics['macro']['auc']:.3f}**"
    assert masked[0] == "| no \\| meta"
    assert masked[1] == f"{metrics['macro']['auc'] - 0.1:.3f}"
    assert masked[7] == "n/a"
    only = ablation_table({"a": {"auc": 0.5}}, metrics=["auc"], bold_best=False)
    assert only.splitlines()[2] == "| a | 0.500 |"
    with pytest.raises(ValueError, match="empty"):
        ablation_table({})
