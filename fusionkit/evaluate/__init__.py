"""Evaluation: predictions, the ISIC metrics tables, calibration, Grad-CAM, the gate, reports."""
