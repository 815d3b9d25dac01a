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


def untrained_run(root: Path, *, n_lesions: int = 12) -> Path:
    """A run directory written by hand, nothing trained: ``root/run`` (config, fitted metadata encoder,
    split, a best checkpoint of a seeded tiny model) over a synthetic set in ``root/data``. Loads and
    predicts like a trained run, in about a second."""
    import json

    import torch

    from fusionkit.data import MetadataEncoder, make_synthetic_milk10k, read_milk10k
    from fusionkit.inference.pipeline import inference_spec
    from fusionkit.model import FusionModel
    from fusionkit.runtime.checkpoint import save_checkpoint
    from fusionkit.runtime.config import RunConfig
    from fusionkit.runtime.rundir import RunDir

    files = make_synthetic_milk10k(root / "data", n_lesions=n_lesions, photo_size=(40, 30), seed=3)
    config = RunConfig.model_validate(
        {**tiny_run_config(root / "cache", epochs=1, n_lesions=n_lesions), "data": {"root": str(root / "data")}}
    )
    table = read_milk10k(files)
    encoder = MetadataEncoder().fit(table.lesions)
    torch.manual_seed(0)
    model = FusionModel(inference_spec(config), metadata_width=encoder.metadata_width)
    run_files = RunDir(root / "run")
    run_files.checkpoints.mkdir(parents=True)
    run_files.config.write_text(config.to_yaml())
    encoder.save(run_files.metadata_encoder)
    ids = [x.lesion_id for x in table.lesions]
    cut = (2 * len(ids)) // 3
    run_files.split.write_text(
        json.dumps({"root": str(root / "data"), "train": ids[:cut], "val": ids[cut:], "test": []})
    )
    save_checkpoint(run_files.checkpoint("best"), model=model, info={"epoch": 1}, include_rng=False)
    return run_files.root
