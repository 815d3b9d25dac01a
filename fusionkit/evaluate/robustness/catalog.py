"""The table of corruptions (:data:`CORRUPTIONS`) and :class:`Perturbation`, what a predictor applies.

A :class:`Perturbation` names one corruption at one severity on one modality with a seed. It is the
only thing a predictor given to :func:`~fusionkit.evaluate.robustness.runner.robustness_table`
must understand: call :meth:`Perturbation.image` on every decoded uint8 image before the model's own
preprocessing, :meth:`Perturbation.record` on every lesion record before the metadata encoder, and
mask the modalities in :attr:`Perturbation.absent` out through the presence masks. The random
generator of each image or record is derived from ``(seed, corruption, modality, lesion id)``
alone, never from the order or batching of the lesions or from the severity, so two models (or two
runs of one) see exactly the same corrupted inputs, and a lesion's noise field at severity 5 is
its severity-1 field scaled.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from fusionkit.data.schema import IMAGE_MODALITIES, MODALITIES
from fusionkit.data.tables import LesionRecord
from fusionkit.evaluate.robustness import artefacts, images, records
from fusionkit.evaluate.robustness.images import check_severity

__all__ = [
    "ABSENT",
    "CORRUPTIONS",
    "IMAGE_MODALITIES",
    "SEVERITIES",
    "Corruption",
    "Perturbation",
    "corruption_rng",
    "corruptions_for",
]

#: The severities every corruption defines.
SEVERITIES: Final[tuple[int, ...]] = (1, 2, 3, 4, 5)
#: Name of the "whole modality absent" entry (no severity).
ABSENT: Final[str] = "absent"

CorruptionKind = Literal["image", "meta", "absent"]


@dataclass(frozen=True, kw_only=True)
class Corruption:
    """One entry of :data:`CORRUPTIONS`.

    Attributes:
        name: the key in :data:`CORRUPTIONS`.
        kind: ``"image"`` (applies to the dermoscopic or the clinical photo), ``"meta"`` (to the
            lesion record) or ``"absent"`` (the whole modality masked out; no severity).
        fn: ``(image, severity, rng) -> image`` or ``(record, severity, rng) -> record``; ``None``
            for ``"absent"``.
        family: a short group name for tables and figures (``"photometric"``, ``"artefact"``,
            ``"geometric"``, ``"metadata"``, ``"absent"``).
    """

    name: str
    kind: CorruptionKind
    fn: Callable[..., Any] | None
    family: str

    def applies_to(self, modality: str) -> bool:
        """Whether this corruption can be applied to ``modality``."""
        if self.kind == "absent":
            return modality in MODALITIES
        return modality in IMAGE_MODALITIES if self.kind == "image" else modality == "meta"


def _entries() -> dict[str, Corruption]:
    table = [
        ("gaussian_noise", "image", images.gaussian_noise, "photometric"),
        ("gaussian_blur", "image", images.gaussian_blur, "photometric"),
        ("jpeg_compression", "image", images.jpeg_compression, "photometric"),
        ("brightness", "image", images.brightness, "photometric"),
        ("contrast", "image", images.contrast, "photometric"),
        ("colour_cast", "image", images.colour_cast, "photometric"),
        ("vignette", "image", artefacts.vignette, "artefact"),
        ("hair", "image", artefacts.hair, "artefact"),
        ("ink_marks", "image", artefacts.ink_marks, "artefact"),
        ("ruler_text", "image", artefacts.ruler_text, "artefact"),
        ("rotation_scale", "image", images.rotation_scale, "geometric"),
        ("missing_age", "meta", records.missing_age, "metadata"),
        ("missing_sex", "meta", records.missing_sex, "metadata"),
        ("missing_site", "meta", records.missing_site, "metadata"),
        ("missing_skin_tone", "meta", records.missing_skin_tone, "metadata"),
        ("missing_monet", "meta", records.missing_monet, "metadata"),
        ("wrong_sex", "meta", records.wrong_sex, "metadata"),
        ("wrong_site", "meta", records.wrong_site, "metadata"),
        ("age_noise", "meta", records.age_noise, "metadata"),
        (ABSENT, "absent", None, "absent"),
    ]
    return {name: Corruption(name=name, kind=kind, fn=fn, family=family) for name, kind, fn, family in table}  # type: ignore[arg-type]


#: Every corruption by name, image ones first, then metadata ones, then ``"absent"``.
CORRUPTIONS: Final[dict[str, Corruption]] = _entries()


def corruptions_for(modality: str, names: Sequence[str] | None = None) -> list[str]:
    """The names in ``names`` (default: all of :data:`CORRUPTIONS`) that apply to ``modality``."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    chosen = list(CORRUPTIONS) if names is None else list(names)
    unknown = [n for n in chosen if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}; expected some of {', '.join(CORRUPTIONS)}")
    return [n for n in chosen if CORRUPTIONS[n].applies_to(modality)]


def corruption_rng(seed: int, corruption: str, modality: str, lesion_id: str) -> np.random.Generator:
    """The generator of one lesion's image or record: a function of its four arguments only
    (CRC-32 of the strings, so it is the same in every process and on every platform)."""
    words = [int(seed), zlib.crc32(corruption.encode()), zlib.crc32(modality.encode()), zlib.crc32(lesion_id.encode())]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass(frozen=True, kw_only=True)
class Perturbation:
    """One corruption at one severity applied to one modality of every lesion.

    Attributes:
        modality: ``"derm"``, ``"clinical"`` or ``"meta"``.
        corruption: a key of :data:`CORRUPTIONS` that applies to ``modality``.
        severity: 1..5, or ``None`` for ``"absent"``.
        seed: the seed every image's and record's generator is derived from.
    """

    modality: str
    corruption: str
    severity: int | None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {self.corruption!r}; expected one of {', '.join(CORRUPTIONS)}")
        entry = CORRUPTIONS[self.corruption]
        if not entry.applies_to(self.modality):
            raise ValueError(
                f"corruption {self.corruption!r} ({entry.kind}) does not apply to modality {self.modality!r}"
            )
        if entry.kind == "absent":
            if self.severity is not None:
                raise ValueError(f"{ABSENT!r} has no severity, got {self.severity!r}")
        else:
            check_severity(self.severity)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        """``"derm/gaussian_noise@3"`` or ``"meta/absent"``."""
        tail = "" if self.severity is None else f"@{self.severity}"
        return f"{self.modality}/{self.corruption}{tail}"

    @property
    def absent(self) -> tuple[str, ...]:
        """The modalities to mask out through the presence masks (``(modality,)`` for ``"absent"``)."""
        return (self.modality,) if self.corruption == ABSENT else ()

    def image(self, modality: str, image: Any, lesion_id: str) -> Any:
        """``image`` (uint8, see :func:`~fusionkit.evaluate.robustness.images.as_chw`) corrupted
        if this perturbation targets ``modality`` with an image corruption; otherwise ``image``
        itself, untouched."""
        entry = CORRUPTIONS[self.corruption]
        if modality != self.modality or entry.kind != "image" or entry.fn is None:
            return image
        return entry.fn(image, self.severity, corruption_rng(self.seed, self.corruption, modality, lesion_id))

    def record(self, record: LesionRecord) -> LesionRecord:
        """``record`` corrupted if this perturbation is a metadata one; otherwise ``record`` itself."""
        entry = CORRUPTIONS[self.corruption]
        if entry.kind != "meta" or entry.fn is None:
            return record
        return entry.fn(record, self.severity, corruption_rng(self.seed, self.corruption, "meta", record.lesion_id))
