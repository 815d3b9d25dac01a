"""Evaluation metrics: the official ISIC-challenge metrics, calibration, and submission files."""

from fusionkit.metrics.calibration import (
    ReliabilityCurve,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)
from fusionkit.metrics.isic import METRIC_KEYS, isic_metrics
from fusionkit.metrics.submission import write_submission

__all__ = [
    "METRIC_KEYS",
    "ReliabilityCurve",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "isic_metrics",
    "negative_log_likelihood",
    "reliability_curve",
    "write_submission",
]
