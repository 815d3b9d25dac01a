"""A dataset view that applies a :class:`~fusionkit.evaluate.robustness.catalog.Perturbation`.

:class:`PerturbedDataset` wraps a dataset of fusionkit items (a
:class:`~fusionkit.data.milk10k.Milk10kDataset` built with uint8 images, i.e. an evaluation
transform with ``normalize=False``, as a loaded run's datasets are) and returns each item with the
perturbation applied: the image of the perturbed modality corrupted (uint8, at the model's input
size, before the model's normalisation), or the metadata vector re-encoded from the corrupted
record with the dataset's own fitted encoder. ``"absent"`` is not applied here: pass
``perturbation.absent`` to the predictor (``absent=``), which masks it out through the presence
masks. Items are built one by one (no batch fast path), so any ``DataLoader`` collates them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from fusionkit.evaluate.robustness.catalog import IMAGE_MODALITIES, Perturbation

__all__ = ["PerturbedDataset"]


class PerturbedDataset(Dataset):
    """``base`` with ``perturbation`` applied to every item (see the module docstring).

    Args:
        base: a dataset whose ``base[i]`` is a fusionkit item (``lesion_id``, ``derm``,
            ``clinical`` uint8 ``(3, H, W)``, ``meta``, ``present``, ...) and which has
            ``records`` (the lesion records in item order) and ``encoder`` (the fitted metadata
            encoder), as :class:`~fusionkit.data.milk10k.Milk10kDataset` has.
        perturbation: what to apply.
    """

    def __init__(self, base: Any, perturbation: Perturbation) -> None:
        self.base = base
        self.perturbation = perturbation

    @property
    def records(self) -> Any:
        """The base dataset's lesion records (uncorrupted)."""
        return self.base.records

    @property
    def transform(self) -> Any:
        """The base dataset's image transform (its mean/std normalise the batches)."""
        return self.base.transform

    @property
    def lesion_ids(self) -> tuple[str, ...]:
        """Lesion ids in item order."""
        return tuple(self.base.lesion_ids)

    @property
    def labels(self) -> Any:
        """The base dataset's labels."""
        return self.base.labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[int(index)])
        p = self.perturbation
        if p.modality in IMAGE_MODALITIES and not p.absent and bool(item["present"][p.modality]):
            image = item[p.modality]
            if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
                raise ValueError(
                    f"PerturbedDataset needs uint8 images to corrupt, got {getattr(image, 'dtype', type(image))} for "
                    f"{p.modality!r}: build the dataset's transform with normalize=False"
                )
            item[p.modality] = p.image(p.modality, image, item["lesion_id"])
        elif p.modality == "meta" and not p.absent:
            record = self.base.records[int(index)]
            item["meta"] = self.base.encoder.transform_one(p.record(record))
        return item
