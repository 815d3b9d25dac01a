"""``evaluate_run``: the evaluation report of a trained run (placeholder wiring, filled in below)."""

from __future__ import annotations

import json
from pathlib import Path

from fusionkit.data import CLASS_NAMES
from fusionkit.evaluate.inference import load_run
from fusionkit.metrics import isic_metrics
from fusionkit.utils.io import atomic_write_text


def evaluate_run(run_dir, *, data_root=None, gradcam_lesions: int = 4, progress: bool = False) -> Path:
    """Evaluate the best checkpoint of a run and write report.md into the run directory."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    dataset = run.validation_dataset() if data_root is None else run.dataset(data_root=data_root)
    preds = run.predict(dataset, progress=progress)
    metrics = isic_metrics(preds.labels, preds.probs, CLASS_NAMES)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    path = run_dir / "report.md"
    atomic_write_text(path, f"# Report\n\nmacro dice {metrics['macro']['dice']:.4f}\n")
    return path
