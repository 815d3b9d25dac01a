"""Running a model over a loader in eval mode: the batch check, absent-modality masks, TTA views averaged;
posteriors, gate weights and labels gathered across ranks (used by training's validation and by :mod:`fusionkit.inference`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fusionkit.errors import DataError
from fusionkit.runtime.device import autocast_context, move_batch
from fusionkit.runtime.distributed import DistInfo, gather_objects
from fusionkit.runtime.tta import tta_views, view_batch


def check_model_batch(batch: Mapping[str, Any], *, modalities: Sequence[str], metadata_width: int | None) -> None:
    """Check a model batch (``derm``/``clinical`` (B, 3, H, W) tensors, ``meta`` (B, F)) before the model sees it.

    Raises:
        DataError: a modality that is not a tensor (a PIL image, an array), an image that is not
            (B, 3, H, W), metadata of the wrong width, or batch sizes that differ, naming the input.
    """
    sizes = {}
    for m in modalities:
        if m not in batch:
            continue
        value = batch[m]
        if not isinstance(value, torch.Tensor):
            raise DataError(
                f"batch[{m!r}]: got a {type(value).__name__}; expected a torch.Tensor "
                f"({'(B, 3, H, W)' if m != 'meta' else '(B, F)'}; use FusionPipeline.predict for photos)"
            )
        if m == "meta":
            if value.ndim != 2 or (metadata_width is not None and value.shape[1] != metadata_width):
                raise DataError(
                    f"batch['meta']: shape {tuple(value.shape)}; expected (B, {metadata_width}) "
                    "(the encoded metadata of the model's MetadataEncoder)"
                )
        elif value.ndim != 4 or value.shape[1] != 3:
            hint = " (channels last? permute(0, 3, 1, 2))" if value.ndim == 4 and value.shape[-1] == 3 else ""
            raise DataError(f"batch[{m!r}]: shape {tuple(value.shape)}; expected (B, 3, H, W){hint}")
        sizes[m] = value.shape[0]
    if len(set(sizes.values())) > 1:
        raise DataError(f"batch sizes differ between inputs {sizes}; expected one size")


@dataclass
class Predictions:
    """What a model said about a set of lesions, sorted by lesion id.

    ``probs`` and ``log_probs`` are (n, N); ``labels`` (n,) or None for an unlabelled split;
    ``weights`` the (n, 3) fusion weights (alpha_I, alpha_IM, alpha_M) or None; ``present`` the
    per-branch presence masks.
    """

    lesion_ids: list[str]
    probs: np.ndarray
    log_probs: np.ndarray
    labels: np.ndarray | None = None
    weights: np.ndarray | None = None
    present: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lesion_ids)


def mask_modalities(batch: dict[str, Any], absent: Iterable[str]) -> dict[str, Any]:
    """A copy of the batch with the ``absent`` modalities marked missing and their tensors zeroed."""
    absent = list(absent)
    if not absent:
        return batch
    batch = dict(batch)
    present = dict(batch.get("present") or {})
    for m in absent:
        if m in batch:
            batch[m] = torch.zeros_like(batch[m])
            size = batch[m].shape[0]
            present[m] = torch.zeros(size, dtype=torch.bool)
    batch["present"] = present
    return batch


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    device: torch.device,
    bf16: bool = False,
    channels_last: bool = False,
    absent: Iterable[str] = (),
    dist_info: DistInfo | None = None,
    progress: bool = False,
    desc: str = "predict",
    batch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    tta: str = "none",
) -> Predictions:
    """Predict every batch of ``loader`` in eval mode; ``absent`` masks modalities out.

    ``tta`` (``none``, ``flips``, ``d4``; :mod:`fusionkit.runtime.tta`) averages the posterior
    P_final and the fusion weights over dihedral views of both images of each lesion;
    ``log_probs`` is then the log of that mean.

    Under torch.distributed each rank predicts its shard and the results are gathered on every
    rank; duplicates from padded shards are dropped. ``batch_transform`` runs on each batch once it
    is on the device (e.g. :func:`fusionkit.data.normalize_batch` for uint8 loaders). Each batch is
    checked first (:func:`check_model_batch`: tensors, (B, 3, H, W)
    images, the model's metadata width), so a wrong input is one line naming it.
    """
    was_training = model.training
    model.eval()
    absent = tuple(absent)
    ids: list[str] = []
    probs, log_probs, labels, weights = [], [], [], []
    present: dict[str, list[np.ndarray]] = {}
    try:
        modalities = tuple(getattr(model, "modalities", ()))
        for batch in tqdm(
            loader, desc=desc, disable=None if progress else True, leave=False
        ):  # None: on a terminal only
            check_model_batch(batch, modalities=modalities, metadata_width=getattr(model, "metadata_width", None))
            batch = move_batch(mask_modalities(batch, absent), device, channels_last=channels_last)
            if batch_transform is not None:
                batch = batch_transform(batch)
            views = tta_views(tta)
            mean_probs: torch.Tensor | None = None
            mean_weights: torch.Tensor | None = None
            for view in views:
                with autocast_context(device, bf16):
                    out = model(view_batch(batch, view))
                share = out.probs.float() / len(views)
                mean_probs = share if mean_probs is None else mean_probs + share
                if out.weights is not None:
                    w = out.weights.float() / len(views)
                    mean_weights = w if mean_weights is None else mean_weights + w
            assert mean_probs is not None  # tta_views always yields at least the identity view
            ids.extend(batch["lesion_id"])
            probs.append(mean_probs.cpu().numpy())
            if len(views) == 1:
                log_probs.append(out.log_probs.float().cpu().numpy())
            else:
                log_probs.append(mean_probs.clamp_min(torch.finfo(torch.float32).tiny).log().cpu().numpy())
            if mean_weights is not None:
                weights.append(mean_weights.cpu().numpy())
            if "label" in batch:
                labels.append(batch["label"].cpu().numpy())
            for name, mask in out.present.items():
                present.setdefault(name, []).append(mask.cpu().numpy())
    finally:
        model.train(was_training)
    local = {
        "ids": ids,
        "probs": np.concatenate(probs) if probs else np.zeros((0, 0)),
        "log_probs": np.concatenate(log_probs) if log_probs else np.zeros((0, 0)),
        "labels": np.concatenate(labels) if labels else None,
        "weights": np.concatenate(weights) if weights else None,
        "present": {k: np.concatenate(v) for k, v in present.items()},
    }
    parts = gather_objects(dist_info, local) if dist_info is not None else [local]
    return _merge(parts)


def _merge(parts: list[dict[str, Any]]) -> Predictions:
    ids = [i for p in parts for i in p["ids"]]
    cat = lambda key: None if parts[0][key] is None else np.concatenate([p[key] for p in parts])  # noqa: E731
    probs, log_probs, labels, weights = cat("probs"), cat("log_probs"), cat("labels"), cat("weights")
    present = {k: np.concatenate([p["present"][k] for p in parts]) for k in parts[0]["present"]}
    # sort by lesion id and drop duplicates (padded distributed shards)
    first: dict[str, int] = {}
    for i, lesion in enumerate(ids):
        first.setdefault(lesion, i)
    order = np.array([first[k] for k in sorted(first)], dtype=int)
    pick = lambda a: None if a is None else a[order]  # noqa: E731
    assert probs is not None and log_probs is not None  # every part has them (possibly empty)
    return Predictions(
        lesion_ids=sorted(first),
        probs=probs[order],
        log_probs=log_probs[order],
        labels=pick(labels),
        weights=pick(weights),
        present={k: v[order] for k, v in present.items()},
    )
