"""Loading a trained run back (spec, metadata encoder, weights) and predicting with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusionkit.data import CLASS_NAMES, MetadataEncoder, Milk10kDataset, build_transforms, find_split, make_loader, normalize_batch
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.runtime.predict import Predictions, predict
from fusionkit.runtime.rundir import RunFiles
from fusionkit.metrics.submission import write_submission
from fusionkit.model import FusionModel
from fusionkit.runtime.checkpoint import load_checkpoint
from fusionkit.train.config import RunConfig, load_run_config
from fusionkit.train.data_setup import default_cache_dir, preprocessing_model


@dataclass
class LoadedRun:
    """A trained run in memory: its resolved config, model (eval mode), metadata encoder, split."""

    run_dir: Path
    config: RunConfig
    model: FusionModel
    encoder: MetadataEncoder
    checkpoint_info: dict[str, Any]
    split: dict[str, Any]
    device: torch.device

    @property
    def data_root(self) -> Path:
        """The folder the run trained on."""
        return Path(self.split["root"])

    def dataset(
        self, *, data_root: str | Path | None = None, split: str = "Training", lesion_ids=None
    ) -> Milk10kDataset:
        """An evaluation dataset (no augmentation, uint8 images) over a split of a MILK10k folder."""
        root = Path(data_root) if data_root is not None else self.data_root
        files = find_split(root, split)
        size = self.config.model.image_size
        data = self.config.data
        return Milk10kDataset(
            files=files, lesion_ids=lesion_ids, encoder=self.encoder, image_size=size,
            missing_image=data.missing_image,
            cache_dir=(data.cache_dir or default_cache_dir()) if data.cache else None,
            transform=build_transforms(
                model_name=preprocessing_model(self.config), image_size=size, train=False, normalize=False
            ),
        )

    def validation_dataset(self) -> Milk10kDataset:
        """The run's own validation split."""
        return self.dataset(lesion_ids=self.split["val"])

    def predict(self, dataset: Milk10kDataset, *, absent=(), progress: bool = False, desc: str = "predict") -> Predictions:
        """Predictions for every lesion of ``dataset`` (``absent`` masks modalities out)."""
        loader = make_loader(dataset, batch_size=self.config.train.eval_batch_size or 2 * self.config.train.batch_size)
        transform = dataset.transform
        return predict(
            self.model, loader, device=self.device, absent=absent, progress=progress, desc=desc,
            batch_transform=lambda b: normalize_batch(b, mean=transform.mean, std=transform.std),
            bf16=self.device.type == "cuda",
        )


def load_run(run_dir: str | Path, *, checkpoint: str = "best", device: str | torch.device | None = None) -> LoadedRun:
    """Load a run directory written by the trainer; ``checkpoint`` is ``best`` or ``last``."""
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    if not files.config.is_file():
        raise ConfigError(f"{run_dir}: not a fusionkit run directory (no config.yaml)")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', not {checkpoint!r}")
    config = load_run_config(files.config)
    encoder = MetadataEncoder.load(files.metadata_encoder)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = FusionModel(config.model, metadata_width=encoder.width)
    info = load_checkpoint(files.checkpoint(checkpoint), model=model)
    model.to(device).eval()
    split = json.loads(files.split.read_text())
    return LoadedRun(run_dir, config, model, encoder, info, split, device)


def _auto_split(root: Path, split: str) -> str:
    """``auto`` is the Test split; never a silent fall-back to Training (a submission of the wrong lesions)."""
    if split != "auto":
        return split
    try:
        find_split(root, "Test")
    except FusionkitError as exc:
        raise ConfigError(
            f"--split auto predicts the Test split, but {exc}; "
            "pass --split Training to predict the training lesions"
        ) from exc
    return "Test"


def predict_split(
    run_dir: str | Path, *, data_root: str | Path, out: str | Path, split: str = "auto", checkpoint: str = "best"
) -> Path:
    """Predict a split with a trained run and write the submission CSV (official MILK10k format)."""
    if Path(out).is_dir():
        raise ConfigError(f"{out} is a directory; give a file name")
    run = load_run(run_dir, checkpoint=checkpoint)
    split = _auto_split(Path(data_root), split)
    preds = run.predict(run.dataset(data_root=data_root, split=split), progress=True)
    return write_submission(out, preds.lesion_ids, preds.probs, CLASS_NAMES)
