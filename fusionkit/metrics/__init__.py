"""Evaluation metrics: the official ISIC-challenge metrics, and calibration."""

from fusionkit.metrics.calibration import (
    ReliabilityCurve,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)
from fusionkit.metrics.isic import METRIC_KEYS, isic_metrics, macro_f1_argmax

__all__ = [
    "METRIC_KEYS",
    "ReliabilityCurve",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "isic_metrics",
    "macro_f1_argmax",
    "negative_log_likelihood",
    "reliability_curve",
]
