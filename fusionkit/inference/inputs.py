"""Raw inputs of one lesion checked at the door and turned into a model batch.

A lesion is given the way a clinic has it: each photo as a path, a PIL image, a uint8 ``(H, W, 3)``
array or a ``(3, H, W)`` tensor (uint8, or float in [0, 1]); the metadata with the MILK10k column
names, either as the lesion's rows of the metadata CSV (``csv.DictReader`` dicts, one per image with
its ``image_type``) or as one dict of the lesion-level columns (``age_approx``, ``sex``,
``skin_tone_class``, ``site``) with the per-image columns prefixed ``derm.`` / ``clinical.``
(``derm.MONET_hair``, ``clinical.image_manipulation``). Each problem is one
:class:`~fusionkit.errors.DataError` naming the input and what was expected.

A photo that is not given is a missing modality: a zero tensor with its presence mask False, so
every branch that needs it is dropped (never a silent zero image that the model takes as real).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusionkit.data.images import resize_image
from fusionkit.data.metadata import MetadataEncoder
from fusionkit.data.schema import (
    AGE_RANGE,
    CLINICAL,
    DERMOSCOPIC,
    IMAGE_MODALITIES,
    IMAGE_TYPES,
    MANIPULATIONS,
    MONET_COLUMNS,
    SEXES,
    SITES,
    SKIN_TONES,
)
from fusionkit.data.tables import ImageRecord, LesionRecord
from fusionkit.errors import DataError

LESION_FIELDS = {"age": "age_approx", "sex": "sex", "site": "site", "skin_tone": "skin_tone_class"}
"""Metadata feature group -> the lesion-level column it is encoded from."""

_TYPE_OF = {"derm": DERMOSCOPIC, "clinical": CLINICAL}
_SOURCE = Path("<metadata>")


@dataclass
class LesionInput:
    """One lesion's inputs, checked and encoded: uint8 images at the model size, the encoded metadata."""

    lesion_id: str
    images: dict[str, torch.Tensor | None]
    meta: torch.Tensor
    imputed: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default=())


def to_uint8_image(value: Any, *, name: str, size: int) -> torch.Tensor:
    """A photo as a uint8 ``(3, size, size)`` tensor, resized as the MILK10k loader resizes files.

    Accepts a path to a JPEG/PNG file, a PIL image, a uint8 ``(H, W, 3)`` numpy array or a
    ``(3, H, W)`` tensor (uint8, or float in [0, 1]).

    Raises:
        DataError: anything else (an HWC tensor, a float array, a missing file), naming ``name``.
    """
    from PIL import Image

    if isinstance(value, (str, Path)):
        path = Path(value)
        try:
            with Image.open(path) as image:
                image.load()
                array = np.array(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(
                f"{name}: cannot read the image ({error}); expected a readable JPEG or PNG", path=path
            ) from None
        tensor = torch.from_numpy(array).permute(2, 0, 1)
    elif isinstance(value, Image.Image):
        tensor = torch.from_numpy(np.array(value.convert("RGB"))).permute(2, 0, 1)
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise DataError(
                f"{name}: a numpy array of shape {value.shape} and dtype {value.dtype}; expected uint8 (H, W, 3) RGB"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(value)).permute(2, 0, 1)
    elif isinstance(value, torch.Tensor):
        tensor = check_image_tensor(value, name=name)
    else:
        raise DataError(
            f"{name}: got a {type(value).__name__}; expected a path, a PIL image, a uint8 (H, W, 3) array "
            "or a (3, H, W) tensor"
        )
    return resize_image(tensor.contiguous(), size)


def check_image_tensor(value: torch.Tensor, *, name: str) -> torch.Tensor:
    """A ``(3, H, W)`` image tensor as uint8 (a float one must hold values in [0, 1])."""
    if value.ndim != 3 or value.shape[0] != 3:
        hint = " (that looks like HWC: permute(2, 0, 1) it)" if value.ndim == 3 and value.shape[-1] == 3 else ""
        raise DataError(f"{name}: a tensor of shape {tuple(value.shape)}; expected (3, H, W) (channels first){hint}")
    if value.dtype == torch.uint8:
        return value.cpu()
    if not value.is_floating_point():
        raise DataError(f"{name}: a {value.dtype} tensor; expected uint8 (0..255) or float in [0, 1]")
    value = value.detach().float().cpu()
    if not bool(torch.isfinite(value).all()) or float(value.min()) < 0.0 or float(value.max()) > 1.0:
        raise DataError(f"{name}: a float tensor with values outside [0, 1]; expected an unnormalised image in [0, 1]")
    return value.mul(255.0).round_().to(torch.uint8)


def required_fields(encoder: MetadataEncoder, images: Sequence[str]) -> list[str]:
    """The metadata columns the encoder needs for a lesion with the photo rows ``images``."""
    groups = feature_groups(encoder)
    fields = [column for group, column in LESION_FIELDS.items() if group in groups]
    for m in images:
        if "monet" in groups:
            fields += [f"{m}.{c}" for c in MONET_COLUMNS]
        if "altered" in groups:
            fields.append(f"{m}.image_manipulation")
    return fields


def feature_groups(encoder: MetadataEncoder) -> set[str]:
    """Which metadata feature groups the encoder encodes (``age``, ``sex``, ``site``, ``skin_tone``, ``monet``, ``altered``)."""
    return set(encoder.features)


def flatten_metadata(metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The one-dict form (lesion-level columns, per-image columns prefixed ``derm.``/``clinical.``)."""
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return dict(metadata)
    if isinstance(metadata, (str, bytes)) or not isinstance(metadata, Sequence):
        raise DataError(
            f"metadata: got a {type(metadata).__name__}; expected a dict of columns or the lesion's CSV rows (list of dicts)"
        )
    flat: dict[str, Any] = {}
    for i, row in enumerate(metadata):
        if not isinstance(row, Mapping):
            raise DataError(f"metadata[{i}]: got a {type(row).__name__}; expected a dict (a csv.DictReader row)")
        kind = row.get("image_type")
        if kind not in IMAGE_TYPES:
            raise DataError(
                f"metadata[{i}]: image_type is {kind!r}; expected one of {', '.join(map(repr, IMAGE_TYPES))}"
            )
        prefix = "derm" if kind == DERMOSCOPIC else "clinical"
        if any(k.startswith(f"{prefix}.") for k in flat):
            raise DataError(f"metadata[{i}]: a second {kind!r} row; expected one row per image")
        for key, value in row.items():
            if key in LESION_FIELDS.values() or key == "lesion_id":
                if key in flat and flat[key] != value:
                    raise DataError(
                        f"metadata[{i}]: {key} is {value!r} but {flat[key]!r} on another row; expected equal"
                    )
                flat[key] = value
            elif key != "image_type":
                flat[f"{prefix}.{key}"] = value
    return flat


def _blank(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str) and value.strip() == "")
        or (isinstance(value, float) and math.isnan(value))
    )


def _number(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:
        raise DataError(f"metadata: {name} is {value!r}; expected a number in [{low:g}, {high:g}] (or blank)")
    return number


def _choice(value: Any, vocabulary: Sequence[Any], name: str) -> Any:
    if value not in vocabulary:
        raise DataError(f"metadata: {name} is {value!r}; expected one of {', '.join(map(repr, vocabulary))} (or blank)")
    return value


def lesion_record(
    flat: Mapping[str, Any],
    *,
    encoder: MetadataEncoder,
    images: Sequence[str],
    lesion_id: str,
    impute: bool = False,
) -> tuple[LesionRecord, tuple[str, ...]]:
    """The :class:`LesionRecord` of one lesion's flat metadata, and the fields that were imputed.

    A blank value (``""`` or None) is what the CSV holds for an unknown value and is encoded as
    such. A field that is not given at all is refused (one line naming every such field) unless
    ``impute``: then the age and MONET scores take the training mean (encoded 0), the sex, site and
    skin tone are unknown, and an image counts as not altered.
    """
    needed = required_fields(encoder, images)
    absent = [f for f in needed if f not in flat]
    if absent and not impute:
        raise DataError(
            f"metadata lacks {', '.join(absent)}; this model's metadata encoder needs them (blank values are "
            "allowed; pass impute=True to fill missing fields with the training mean / unknown)"
        )
    imputed = tuple(absent)
    age_value = flat.get("age_approx")
    if "age_approx" in absent:
        age: float | None = encoder.age_mean
    else:
        age = None if _blank(age_value) else _number(age_value, "age_approx", *AGE_RANGE)
    sex = flat.get("sex")
    sex = None if _blank(sex) else _choice(sex, SEXES, "sex")
    site = flat.get("site")
    site = None if _blank(site) else _choice(site, SITES, "site")
    tone_value = flat.get("skin_tone_class")
    skin_tone = None
    if not _blank(tone_value):
        tone = _number(tone_value, "skin_tone_class", SKIN_TONES[0], SKIN_TONES[-1])
        if tone != int(tone):
            raise DataError(f"metadata: skin_tone_class is {tone_value!r}; expected an integer 0..5 (or blank)")
        skin_tone = int(tone)
    rows: dict[str, ImageRecord | None] = {}
    for j, m in enumerate(IMAGE_MODALITIES):
        given = any(k.startswith(f"{m}.") for k in flat)
        if m not in images and not given:
            rows[m] = None
            continue
        monet = []
        for c, column in enumerate(MONET_COLUMNS):
            key = f"{m}.{column}"
            if key in flat:
                monet.append(_number(flat[key], key, 0.0, 1.0))
            else:
                mean = (encoder.monet_mean or (0.0,) * 14)[j * len(MONET_COLUMNS) + c]
                monet.append(float(min(max(mean, 0.0), 1.0)))
        manipulation = flat.get(f"{m}.image_manipulation", MANIPULATIONS[0])
        manipulation = _choice(manipulation, MANIPULATIONS, f"{m}.image_manipulation")
        rows[m] = ImageRecord(
            isic_id=str(flat.get(f"{m}.isic_id", f"{lesion_id}-{m}")),
            image_type=_TYPE_OF[m],
            manipulation=manipulation,
            monet=tuple(monet),
            line=0,
        )
    record = LesionRecord(
        lesion_id=lesion_id,
        age=age,
        sex=sex,
        skin_tone=skin_tone,
        site=site,
        derm=rows["derm"],
        clinical=rows["clinical"],
        label=None,
        metadata_csv=_SOURCE,
    )
    return record, imputed


def lesion_input(
    *,
    derm: Any,
    clinical: Any,
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    encoder: MetadataEncoder | None,
    image_size: int,
    model_modalities: Sequence[str],
    absent: Sequence[str] = (),
    impute: bool = False,
    lesion_id: str | None = None,
    default_id: str = "lesion",
) -> LesionInput:
    """Check and encode one lesion's raw inputs (see the module docstring).

    Raises:
        DataError: neither photo for a model that uses photos, a photo of the wrong kind, or
            metadata the encoder cannot encode (a missing field, a value outside the vocabulary).
    """
    unknown = [a for a in absent if a not in ("derm", "clinical", "meta")]
    if unknown:
        raise DataError(f"absent: {unknown}; expected modality names among derm, clinical, meta")
    photos = {"derm": derm, "clinical": clinical}
    needs_images = [m for m in IMAGE_MODALITIES if m in model_modalities]
    if needs_images and all(photos[m] is None or m in absent for m in needs_images):
        raise DataError(
            f"neither photo given (derm and clinical are None or absent); this model needs at least one of "
            f"{', '.join(needs_images)}"
        )
    flat = flatten_metadata(metadata)
    lesion_id = lesion_id or str(flat.get("lesion_id") or default_id)
    images = {
        m: (None if photos[m] is None or m in absent else to_uint8_image(photos[m], name=m, size=image_size))
        for m in IMAGE_MODALITIES
    }
    imputed: tuple[str, ...] = ()
    uses_meta = "meta" in model_modalities and "meta" not in absent
    if uses_meta:
        if encoder is None:
            raise DataError("metadata: this model uses metadata but has no metadata encoder")
        if metadata is None:
            raise DataError(
                "metadata: none given; this model uses metadata (pass metadata=..., or absent=('meta',) "
                "to predict without it)"
            )
        record, imputed = lesion_record(
            flat,
            encoder=encoder,
            images=[m for m in IMAGE_MODALITIES if photos[m] is not None],
            lesion_id=lesion_id,
            impute=impute,
        )
        meta = encoder.transform([record])[0]
    else:
        meta = torch.zeros(encoder.metadata_width if encoder is not None else 0)
    missing = tuple(
        m for m in model_modalities if (m == "meta" and not uses_meta) or (m != "meta" and images[m] is None)
    )
    return LesionInput(lesion_id=lesion_id, images=images, meta=meta, imputed=imputed, missing=missing)


def collate_lesions(lesions: Sequence[LesionInput], *, image_size: int) -> dict[str, Any]:
    """The uint8 model batch of checked lesions (absent photos as zeros with presence False)."""
    blank = torch.zeros(3, image_size, image_size, dtype=torch.uint8)
    batch: dict[str, Any] = {"lesion_id": [x.lesion_id for x in lesions]}
    present: dict[str, torch.Tensor] = {}
    for m in IMAGE_MODALITIES:
        batch[m] = torch.stack([image if (image := x.images[m]) is not None else blank for x in lesions])
        present[m] = torch.tensor([x.images[m] is not None for x in lesions], dtype=torch.bool)
    batch["meta"] = torch.stack([x.meta for x in lesions])
    present["meta"] = torch.tensor(["meta" not in x.missing for x in lesions], dtype=torch.bool)
    batch["present"] = present
    return batch
