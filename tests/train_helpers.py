"""Tiny run configs shared by the training, CLI and evaluation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_IMAGE_ENCODER = {"model_name": "test_efficientnet", "pretrained": False}


def tiny_run_config(
    cache_dir: Path, *, preset: str = "ji-adf", epochs: int = 2, n_lesions: int = 60, **train: Any
) -> dict[str, Any]:
    """A run config that trains in seconds on 2 CPU cores (32x32 images, tiny backbone)."""
    return {
        "model": {
            "preset": preset,
            "overrides": {"image_size": 32, "image_encoder": dict(TINY_IMAGE_ENCODER)},
        },
        "train": {"epochs": epochs, "batch_size": 8, "lr": 3e-3, "device": "cpu", "deterministic": True, **train},
        "data": {
            "synthetic": {"n_lesions": n_lesions, "photo_size": [40, 30], "seed": 3},
            "cache_dir": str(cache_dir),
            "augment": {"rotation_degrees": 0.0},
        },
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a run config as YAML and return its path."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_carried_run(config: dict[str, Any], run_dir: Path) -> Path:
    """Train ``config`` on its synthetic set into ``run_dir`` and store the decision rule
    (``inference.json``), as ``fusionkit train`` does before its report; returns ``run_dir``."""
    from fusionkit.inference.pipeline import store_run_decision
    from fusionkit.runtime.config import RunConfig
    from fusionkit.train.trainer import train_run

    train_run(
        RunConfig.model_validate(config), run_dir=run_dir, synthetic=True, progress=False, after_fit=store_run_decision
    )
    return run_dir
