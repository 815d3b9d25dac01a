"""Loading a trained run back (spec, metadata encoder, weights) and predicting with it.

Submissions from one run or an ensemble are written by :mod:`fusionkit.evaluate.ensemble`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusionkit.data import MetadataEncoder, Milk10kDataset, build_transforms, find_split, make_loader, normalize_batch
from fusionkit.errors import ConfigError
from fusionkit.model import FusionModel
from fusionkit.runtime.checkpoint import load_checkpoint
from fusionkit.runtime.config import RunConfig, default_cache_dir, load_run_config, preprocessing_model
from fusionkit.runtime.predict import Predictions, predict
from fusionkit.runtime.rundir import RunFiles


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
            files=files,
            lesion_ids=lesion_ids,
            encoder=self.encoder,
            image_size=size,
            missing_image=data.missing_image,
            cache_dir=(data.cache_dir or default_cache_dir()) if data.cache else None,
            transform=build_transforms(
                model_name=preprocessing_model(self.config), image_size=size, train=False, normalize=False
            ),
        )

    def validation_dataset(self) -> Milk10kDataset:
        """The run's own validation split."""
        return self.dataset(lesion_ids=self.split["val"])

    def predict(
        self, dataset: Milk10kDataset, *, absent=(), progress: bool = False, desc: str = "predict", tta: str = "none"
    ) -> Predictions:
        """Predictions for every lesion of ``dataset`` (``absent`` masks modalities out; ``tta``:
        ``none``, ``flips`` or ``d4``, see :mod:`fusionkit.runtime.tta`)."""
        loader = make_loader(dataset, batch_size=self.config.train.eval_batch_size or 2 * self.config.train.batch_size)
        transform = dataset.transform
        return predict(
            self.model,
            loader,
            device=self.device,
            absent=absent,
            progress=progress,
            desc=desc,
            batch_transform=lambda b: normalize_batch(b, mean=transform.mean, std=transform.std),
            bf16=self.device.type == "cuda",
            tta=tta,
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
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model = FusionModel(config.model, metadata_width=encoder.width)
    if not files.checkpoint(checkpoint).is_file():
        raise ConfigError(
            f"{run_dir}: the run has no {checkpoint} checkpoint ({files.checkpoint(checkpoint)} is missing)"
        )
    info = load_checkpoint(files.checkpoint(checkpoint), model=model)
    model.to(device).eval()
    split = json.loads(files.split.read_text())
    return LoadedRun(run_dir, config, model, encoder, info, split, device)
