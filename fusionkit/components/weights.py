"""Local weights files for image encoders: read a state dict, strip a key prefix, check the fit.

Shared by the timm and open_clip encoders so that a weights file that does not fit is refused the
same way by both: one :class:`~fusionkit.errors.PretrainedWeightsError` line naming the file, the
number of missing and unexpected keys, and the first three of each.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from fusionkit.errors import PretrainedWeightsError


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.safetensors`` by its suffix, else ``torch.load`` with
    ``weights_only=True`` onto the CPU); a ``{"state_dict": {...}}`` checkpoint is unwrapped."""
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise PretrainedWeightsError(f"{path}: cannot read weights ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str, *, path: Path) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose key starts with ``prefix``, with the prefix removed.

    Keys without the prefix are dropped (the text tower of a whole CLIP checkpoint read with
    ``visual.``); a file with no key under the prefix is refused in one line naming the file.
    """
    kept = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not kept:
        raise PretrainedWeightsError(
            f"{path}: no key starts with weights_prefix {prefix!r} ({len(state)} keys, e.g. {sorted(state)[:3]})"
        )
    return kept


def check_fit(path: Path, state: Iterable[str], expected: Iterable[str], *, target: str) -> None:
    """Refuse ``state``'s keys unless they are exactly ``expected`` (the model's own keys).

    The message names ``path``, the ``target`` module, and counts and shows (the first three of)
    the missing and the unexpected keys.
    """
    have, want = set(state), set(expected)
    missing = sorted(want - have)
    unexpected = sorted(have - want)
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path}: weights do not fit {target} "
            f"({len(missing)} missing keys, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
