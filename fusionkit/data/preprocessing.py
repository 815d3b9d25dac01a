"""What an image encoder expects of its input: ``ImagePreprocessing`` (size, mean, std, interpolation).

An image encoder *declares* its preprocessing (its ``preprocessing`` property), the way a timm model
carries its ``pretrained_cfg`` and ``timm.data.resolve_model_data_config(model)`` reads it; the
built model reports it (:attr:`fusionkit.FusionModel.preprocessing`) and the data transforms, the
trainer and evaluation read it from there (:func:`fusionkit.data.build_transforms`). Nothing
re-derives it from a model name.

It lives in :mod:`fusionkit.data` (below the components) so that encoders, transforms and saved
models share one definition, and it round-trips through JSON (:meth:`ImagePreprocessing.to_dict`,
:meth:`ImagePreprocessing.from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fusionkit.errors import ConfigError

INTERPOLATIONS: tuple[str, ...] = ("bicubic", "bilinear", "nearest", "lanczos")
"""The resize interpolations a preprocessing may name (torchvision's modes of the same names)."""

_FIELDS = ("input_size", "mean", "std", "interpolation")


def _triple(name: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ConfigError(f"preprocessing {name} must be three numbers (R, G, B), got {value!r}") from None
    if len(values) != 3 or not all(math.isfinite(x) for x in values):
        raise ConfigError(f"preprocessing {name} must be three finite numbers (R, G, B), got {value!r}")
    if positive and min(values) <= 0:
        raise ConfigError(f"preprocessing {name} must be positive, got {value!r}")
    return values


@dataclass(frozen=True)
class ImagePreprocessing:
    """How images are prepared for an image encoder: ``x -> resize(x, input_size) / 255 -> (x - mean) / std``.

    Attributes:
        input_size: the side of the square input, in pixels. An encoder declares its native size
            (timm: the larger side of ``pretrained_cfg["input_size"]``); a built
            :class:`~fusionkit.FusionModel` reports the size it runs at (``ModelSpec.image_size``).
        mean: per-channel mean (R, G, B) on the 0..1 scale.
        std: per-channel standard deviation (R, G, B) on the 0..1 scale, all positive.
        interpolation: the resize interpolation, one of :data:`INTERPOLATIONS`.

    Invalid values are refused with one :class:`~fusionkit.errors.ConfigError` line naming the field.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"preprocessing input_size must be a positive int, got {size!r}")
        object.__setattr__(self, "mean", _triple("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _triple("std", self.std, positive=True))
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}"
            )

    def with_size(self, input_size: int) -> ImagePreprocessing:
        """The same normalisation at another square ``input_size``."""
        return replace(self, input_size=input_size)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict: ``{"input_size": int, "mean": [3], "std": [3], "interpolation": str}``."""
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessing:
        """Read :meth:`to_dict`'s format back; a missing or unknown key is one line naming it."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"preprocessing must be a mapping of {', '.join(_FIELDS)}; got {type(data).__name__}")
        missing = [k for k in _FIELDS if k not in data]
        unknown = sorted(set(data) - set(_FIELDS))
        if missing or unknown:
            what = f"missing {missing}" if missing else f"unknown keys {unknown}"
            raise ConfigError(f"preprocessing: {what}; expected exactly {list(_FIELDS)}")
        return cls(
            input_size=data["input_size"],
            mean=data["mean"],
            std=data["std"],
            interpolation=data["interpolation"],
        )

    @classmethod
    def from_timm_config(cls, config: Mapping[str, Any]) -> ImagePreprocessing:
        """From a timm data config (``timm.data.resolve_model_data_config(model)``): its mean, std,
        interpolation (an interpolation outside :data:`INTERPOLATIONS` becomes bicubic) and input size."""
        interpolation = str(config.get("interpolation") or "bicubic")
        size: Sequence[int] = config.get("input_size", (3, 224, 224))
        return cls(
            input_size=int(max(size[-2:])),
            mean=config["mean"],
            std=config["std"],
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
        )
