"""Evaluation: the ISIC metrics tables, calibration, Grad-CAM, the gate, reports; train-then-report."""

from fusionkit.evaluate.pipeline import train_and_evaluate
from fusionkit.evaluate.report import evaluate_run

__all__ = ["evaluate_run", "train_and_evaluate"]
