"""Training augmentation of whole uint8 batches on the device (``data.augment_on: device``).

Same distribution as the per-image CPU path (:class:`~fusionkit.data.transforms.ImageTransform`
with an :class:`~fusionkit.data.transforms.AugmentConfig`), applied after the batch reaches the
device, so the DataLoader only copies cached uint8 images. Flips, rot90, the optional rotation and
hue use ``torchvision.transforms.v2.functional``; the brightness/contrast/saturation jitter is our
own batched colour map because v2's functional ops take one factor per call, whereas here every
image gets its own ``3x3`` matrix and offset in one batched multiply (one pass over the batch).

Semantics (as on the CPU): every image draws its own parameters, so a lesion's dermoscopic and
clinical images (two different photographs) are flipped, rotated and jittered independently; an
absent image (all zeros) stays zero. Parameters are drawn on the CPU from a generator seeded by
:func:`batch_generator` from ``(seed, epoch, batch index, rank)`` only, so a resumed run replays
exactly the same augmentations, whatever device or batch composition came before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from fusionkit.data.transforms import AugmentConfig, colour_map, upload

_JITTER = ("brightness", "contrast", "saturation")


def batch_generator(*, seed: int, epoch: int, batch_index: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, batch_index, rank)`` alone (NumPy SeedSequence)."""
    state = np.random.SeedSequence([seed, epoch, batch_index, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class AugmentParams:
    """Per-image random parameters of one batch (CPU tensors of length ``B``).

    Attributes:
        hflip: flip left-right.
        vflip: flip top-bottom.
        rot90: number of quarter turns (0-3) counter-clockwise, as ``torch.rot90``.
        angle: further rotation in degrees (0 when ``rotation_degrees`` is 0).
        order: ``(B, 3)`` order of the brightness (0), contrast (1) and saturation (2) steps.
        factors: ``(B, 3)`` brightness, contrast and saturation factors (1 = unchanged).
        hue: hue shift (fraction of the colour circle; 0 when ``hue`` is 0).
    """

    hflip: torch.Tensor
    vflip: torch.Tensor
    rot90: torch.Tensor
    angle: torch.Tensor
    order: torch.Tensor
    factors: torch.Tensor
    hue: torch.Tensor


class DeviceAugment:
    """Augment uint8 ``(B, 3, S, S)`` batches on their device with an :class:`AugmentConfig`.

    The steps and their order are those of the CPU transform: horizontal flip, vertical flip,
    rot90, rotation, colour jitter (brightness/contrast/saturation in a random order per image,
    clamped once at the end: :func:`~fusionkit.data.transforms.colour_map`, as on the CPU), hue.
    """

    def __init__(self, *, config: AugmentConfig) -> None:
        self.config = config

    def sample(self, count: int, generator: torch.Generator) -> AugmentParams:
        """Draw the parameters of ``count`` images from ``generator`` (always the same number of draws)."""
        c = self.config
        uniform = torch.rand(count, 9, generator=generator, dtype=torch.float64)
        rot90 = torch.randint(4, (count,), generator=generator) if c.rot90 else torch.zeros(count, dtype=torch.long)
        order = torch.rand(count, 3, generator=generator).argsort(dim=1)
        spreads = torch.tensor([getattr(c, name) for name in _JITTER], dtype=torch.float64)
        low = (1.0 - spreads).clamp(min=0.0)
        factors = low + (1.0 + spreads - low) * uniform[:, 3:6]
        return AugmentParams(
            hflip=uniform[:, 0] < c.hflip,
            vflip=uniform[:, 1] < c.vflip,
            rot90=rot90,
            angle=((2.0 * uniform[:, 2] - 1.0) * c.rotation_degrees).float(),
            order=order,
            factors=factors.float(),
            hue=((2.0 * uniform[:, 6] - 1.0) * c.hue).float(),
        )

    def __call__(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` with parameters drawn from ``generator``; returns a new uint8 batch."""
        return self.apply(images, self.sample(images.shape[0], generator))

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment ``images`` (uint8 ``(B, 3, S, S)``, any device) with the given parameters."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 (B, 3, S, S) batch, got {tuple(images.shape)} {images.dtype}")
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"device augmentation needs square images, got {tuple(images.shape[-2:])}")
        out = images
        steps = [(params.hflip, F.horizontal_flip), (params.vflip, F.vertical_flip)]
        steps += [(params.rot90 == k, lambda x, k=k: torch.rot90(x, k, dims=(-2, -1))) for k in (1, 2, 3)]
        for mask, op in steps:
            out = _where(mask, op, out)
        out = out.clone() if out is images else out
        if self.config.rotation_degrees > 0:
            for i, angle in enumerate(params.angle.tolist()):
                out[i] = F.rotate(out[i], angle, interpolation=InterpolationMode.BILINEAR)
        if max(getattr(self.config, name) for name in _JITTER) > 0:
            out = colour_map(out, order=upload(params.order, out.device), factors=upload(params.factors, out.device))
        if self.config.hue > 0:
            for i, shift in enumerate(params.hue.tolist()):
                out[i] = F.adjust_hue(out[i], shift)
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)  # keep the caller's layout
        return out


def _where(
    mask: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, batched: bool | None = None
) -> torch.Tensor:
    """``op`` applied to the images where the CPU ``mask`` is True.

    ``batched`` (default: on CUDA): the whole batch is transformed and selected with ``torch.where``
    (no index upload, no host synchronisation); otherwise only the selected images are transformed
    (less work on a CPU).
    """
    if not bool(mask.any()):
        return images
    if images.is_cuda if batched is None else batched:
        return torch.where(upload(mask, images.device).view(-1, 1, 1, 1), op(images), images)
    out = images.clone()
    index = mask.nonzero().flatten()
    out[index] = op(images[index])
    return out
