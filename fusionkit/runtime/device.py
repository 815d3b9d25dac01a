"""Devices, seeding, bf16 autocast and moving a batch: what the trainer and the evaluation share."""

from __future__ import annotations

import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from fusionkit.errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a :class:`ConfigError`."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is available here; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, bf16: bool) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def move_batch(batch: dict[str, Any], device: torch.device, *, channels_last: bool = False) -> dict[str, Any]:
    """The batch's tensors on ``device`` (images optionally channels_last), other values as they are."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value
        elif isinstance(value, dict):
            out[key] = move_batch(value, device)
        else:
            out[key] = value
    return out
