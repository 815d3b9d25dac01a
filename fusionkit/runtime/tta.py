"""Test-time augmentation: the dihedral views of a lesion's images, applied to both images together.

``flips`` is the group the two flips generate (identity, horizontal, vertical, both: 4 views);
``d4`` adds the rotations by 90 and 270 degrees and the two transposes (all 8 symmetries of the
square). The prediction is the mean posterior over the views (:func:`fusionkit.runtime.predict.predict`).
Kept in fusionkit rather than taken from a TTA library: the views must move the dermoscopic and
the clinical image of a batch together, which is two ``torch.flip``/``rot90`` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fusionkit.errors import ConfigError

TTA_MODES = ("none", "flips", "d4")
"""The test-time augmentations ``--tta`` accepts."""

View = Callable[[torch.Tensor], torch.Tensor]

_VIEWS: dict[str, View] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-1).flip(-2),
    "rot90": lambda x: x.rot90(1, dims=(-2, -1)),
    "rot270": lambda x: x.rot90(3, dims=(-2, -1)),
    "transpose": lambda x: x.transpose(-2, -1),
    "antitranspose": lambda x: x.flip(-1).flip(-2).transpose(-2, -1),
}
_MODES = {
    "none": ("identity",),
    "flips": ("identity", "hflip", "vflip", "rot180"),
    "d4": tuple(_VIEWS),
}


def _unknown(mode: str) -> str:
    return f"unknown test-time augmentation {mode!r}; expected one of {', '.join(TTA_MODES)}"


def check_tta(mode: str) -> str:
    """``mode`` if it is a TTA mode (what ``--tta`` and the ``tta=`` arguments check at the door).

    Raises:
        ConfigError: an unknown mode, in one line naming the choices.
    """
    if mode not in _MODES:
        raise ConfigError(_unknown(mode))
    return mode


def tta_views(mode: str) -> tuple[str, ...]:
    """The names of the views of a TTA mode (``identity`` first); ``ValueError`` for an unknown one."""
    if mode not in _MODES:
        raise ValueError(_unknown(mode))
    return _MODES[mode]


def view_batch(batch: dict[str, Any], view: str, modalities: tuple[str, ...] = ("derm", "clinical")) -> dict[str, Any]:
    """A copy of ``batch`` with the same dihedral ``view`` applied to every image tensor (B, C, H, W)."""
    if view == "identity":
        return batch
    out = dict(batch)
    for m in modalities:
        if m in out:
            out[m] = _VIEWS[view](out[m])
    return out
