"""Mixup and cutmix over whole lesions: both images, the metadata and the label mixed alike.

Own code rather than ``timm.data.Mixup``: timm mixes one image tensor, while a lesion here has two
images (the same cutmix box and the same weight must go to both), metadata and presence masks.
Randomness comes from torch's global CPU generator, which checkpoints save and resume restores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fusionkit.runtime.config import MixupSpec

IMAGE_KEYS = ("derm", "clinical")
"""Batch keys holding images (mixed by both methods)."""


@dataclass(frozen=True)
class MixInfo:
    """What one call did: ``kind`` (``none``, ``mixup``, ``cutmix``), the label weight ``lam`` of
    the original lesion, the partner permutation, and the cutmix box as fractions
    ``(top, bottom, left, right)`` of the image height and width."""

    kind: str
    lam: float = 1.0
    perm: torch.Tensor | None = None
    box: tuple[float, float, float, float] | None = None


def cutmix_box(lam: float, center: tuple[float, float]) -> tuple[float, float, float, float]:
    """The box (fractions of height and width) of area about ``1 - lam``, centred at ``center``
    (fractions), clipped to the image: side ``sqrt(1 - lam)`` of each dimension."""
    side = math.sqrt(1.0 - lam)
    cy, cx = center
    return (max(cy - side / 2, 0.0), min(cy + side / 2, 1.0), max(cx - side / 2, 0.0), min(cx + side / 2, 1.0))


def _pixels(box: tuple[float, float, float, float], height: int, width: int) -> tuple[int, int, int, int]:
    top, bottom, left, right = box
    return round(top * height), round(bottom * height), round(left * width), round(right * width)


def mix_batch(batch: dict[str, Any], *, spec: MixupSpec, num_classes: int) -> tuple[dict[str, Any], MixInfo]:
    """The batch with labels as soft targets (n, N), mixed with a shuffled copy with prob ``spec.prob``.

    Mixup: every image and the metadata become ``lam x + (1 - lam) x[perm]``, ``lam ~
    Beta(mixup_alpha, mixup_alpha)``. Cutmix: one box of area ``1 - lam`` (``lam ~
    Beta(cutmix_alpha, cutmix_alpha)``) is pasted from the partner into both images at the same
    relative place; ``lam`` is then corrected to the pasted share of the pixels, and the metadata
    stays. Targets are ``lam onehot(y) + (1 - lam) onehot(y[perm])``. A mixed modality counts as
    present when either lesion has it (an absent image is zeros after normalisation, so the present
    one shows through), so a mixed lesion keeps every input the decision needs. Unmixed batches still get one-hot soft targets, so a graphed
    step sees one label shape.
    """
    label = batch["label"]
    target = F.one_hot(label, num_classes).to(torch.float32)
    out = {**batch, "label": target}
    if not spec.enabled or float(torch.rand(())) >= spec.prob:
        return out, MixInfo(kind="none")
    cutmix = spec.cutmix_alpha > 0 and (spec.mixup_alpha <= 0 or float(torch.rand(())) < spec.switch_prob)
    alpha = spec.cutmix_alpha if cutmix else spec.mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(label.shape[0]).to(label.device)
    images = [k for k in IMAGE_KEYS if k in batch]
    box = None
    if cutmix:
        box = cutmix_box(lam, (float(torch.rand(())), float(torch.rand(()))))
        pasted = None
        for key in images:
            x = batch[key].clone()
            top, bottom, left, right = _pixels(box, x.shape[-2], x.shape[-1])
            x[..., top:bottom, left:right] = batch[key][perm][..., top:bottom, left:right]
            out[key] = x
            pasted = (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
        if pasted is not None:
            lam = 1.0 - pasted
    else:
        for key in [*images, "meta"]:
            if key in batch:
                out[key] = lam * batch[key] + (1.0 - lam) * batch[key][perm]
    out["label"] = lam * target + (1.0 - lam) * target[perm]
    mixed = images if cutmix else [*images, "meta"]
    out["present"] = {k: (v | v[perm]) if k in mixed else v for k, v in batch["present"].items()}
    return out, MixInfo(kind="cutmix" if cutmix else "mixup", lam=lam, perm=perm, box=box)
