"""What the demo page does with one lesion, without Gradio: the form's fields, the checked uploads,
the prediction, the Grad-CAM overlays and the Markdown that shows them.

Kept apart from :mod:`fusionkit.demo.app` so that it can be tested and reused without the ``demo``
extra: :func:`predict_case` takes the form's values as plain Python and returns a :class:`CaseResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fusionkit.data import normalize_batch
from fusionkit.data.schema import CLASS_FULL_NAMES, MANIPULATIONS, MONET_COLUMNS
from fusionkit.errors import DataError, FusionkitError
from fusionkit.evaluate.gradcam import gradcam
from fusionkit.inference.inputs import IMAGE_MODALITIES, collate_lesions, feature_groups, lesion_input
from fusionkit.inference.pipeline import FusionPipeline, LesionPrediction

logger = logging.getLogger("fusionkit.demo")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
"""The largest photo the page accepts (10 MiB; the server refuses bigger uploads too)."""

MAX_PIXELS = 40_000_000
"""The most pixels a photo may have (a decompression bomb is refused before it is decoded)."""

PHOTO_NAMES = {"derm": "Dermoscopic photo", "clinical": "Clinical close-up"}
"""The page's name for each photo input."""

WEIGHT_NAMES = {
    "alpha_I": "the photos (image branch)",
    "alpha_IM": "photos and patient record together (joint branch)",
    "alpha_M": "the patient record (metadata branch)",
}
"""What each adaptive-decision-fusion weight (eq 5) means on the page."""

OVERLAY_SIZE = 320
"""Side of the Grad-CAM overlays shown on the page (pixels)."""

RESEARCH_NOTE = (
    "**Research model, not a diagnosis.** This page shows what a model trained with fusionkit predicts. "
    "It is not a medical device and must not guide the care of a patient."
)
"""The note the page shows above its inputs."""


@dataclass(frozen=True)
class FormFields:
    """Which inputs a pipeline's page offers: the photos it reads and the metadata groups its encoder
    encodes (``age``, ``sex``, ``site``, ``skin_tone``, ``monet``, ``altered``)."""

    photos: tuple[str, ...]
    metadata: frozenset[str]

    @property
    def monet(self) -> bool:
        """Whether the page offers the seven MONET scores per photo."""
        return "monet" in self.metadata

    @property
    def altered(self) -> bool:
        """Whether the page asks if each photo was altered (``image_manipulation``)."""
        return "altered" in self.metadata


def form_fields(pipe: FusionPipeline) -> FormFields:
    """The inputs ``pipe``'s model uses."""
    photos = tuple(m for m in IMAGE_MODALITIES if m in pipe.modalities)
    groups = feature_groups(pipe.encoder) if ("meta" in pipe.modalities and pipe.encoder is not None) else set()
    return FormFields(photos=photos, metadata=frozenset(groups))


def read_photo(path: str | Path | None, *, name: str) -> Image.Image | None:
    """An uploaded photo as an RGB image, or None when none was given.

    Raises:
        DataError: a file over :data:`MAX_UPLOAD_BYTES` or :data:`MAX_PIXELS`, or one that is not a
            readable JPEG/PNG (a text file, a truncated JPEG); the message names the input.
    """
    if path is None or str(path) == "":
        return None
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise DataError(f"{name}: the file is {size / 2**20:.1f} MiB; at most {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        with Image.open(path) as probe:
            if probe.width * probe.height > MAX_PIXELS:
                raise DataError(f"{name}: {probe.width}x{probe.height} pixels; at most {MAX_PIXELS:,} pixels")
            probe.verify()
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise DataError(f"{name}: not a readable image; upload a JPEG or PNG photo") from None


def metadata_record(
    fields: FormFields,
    *,
    photos: Sequence[str],
    age: float | str | None = None,
    sex: str | None = None,
    site: str | None = None,
    skin_tone: int | str | None = None,
    monet: Mapping[str, float | str | None] | None = None,
    altered: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The one-dict metadata (:mod:`fusionkit.inference.inputs`) of the form's values.

    A field left blank (None or ``""``) is left out, so that :meth:`FusionPipeline.predict` with
    ``impute=True`` fills it from the training statistics (age, MONET: the training mean; sex, site,
    skin tone: unknown) and lists it in ``imputed``. ``monet`` maps ``derm.MONET_hair`` and the like
    to a score; ``altered`` maps a photo to its ``image_manipulation``.
    """
    record: dict[str, str] = {}

    def put(key: str, value: Any) -> None:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        record[key] = str(value)

    groups = fields.metadata
    if "age" in groups:
        put("age_approx", age)
    if "sex" in groups:
        put("sex", sex)
    if "site" in groups:
        put("site", site)
    if "skin_tone" in groups:
        put("skin_tone_class", skin_tone)
    for m in photos:
        if fields.monet:
            for column in MONET_COLUMNS:
                put(f"{m}.{column}", (monet or {}).get(f"{m}.{column}"))
        if fields.altered:
            put(f"{m}.image_manipulation", (altered or {}).get(m) or MANIPULATIONS[0])
    return record


@dataclass
class CaseResult:
    """What the page shows after **Predict**: the prediction (None when the inputs were refused),
    the Grad-CAM overlay of each photo given, and a message (the refusal, or empty)."""

    prediction: LesionPrediction | None
    overlays: dict[str, np.ndarray] = field(default_factory=dict)
    message: str = ""


def predict_case(
    pipe: FusionPipeline,
    *,
    derm: str | Path | None,
    clinical: str | Path | None,
    metadata: Mapping[str, Any],
    gradcam_maps: bool = True,
) -> CaseResult:
    """Predict one lesion from the page's uploads (file paths, None for a photo left out) and its
    metadata record (:func:`metadata_record`), imputing blank fields; add Grad-CAM overlays.

    Never raises for bad input: a refused upload or field is the result's ``message`` (one line).
    """
    fields = form_fields(pipe)
    try:
        photos = {
            m: read_photo(path, name=PHOTO_NAMES[m])
            for m, path in (("derm", derm), ("clinical", clinical))
            if m in fields.photos
        }
        if fields.photos and all(p is None for p in photos.values()):
            raise DataError("upload at least one photo (the dermoscopic photo or the clinical close-up)")
        prediction = pipe.predict(
            derm=photos.get("derm"), clinical=photos.get("clinical"), metadata=dict(metadata), impute=True
        )
    except FusionkitError as exc:
        return CaseResult(prediction=None, message=str(exc))
    overlays: dict[str, np.ndarray] = {}
    if gradcam_maps:
        try:
            overlays = gradcam_overlays(pipe, photos=photos, metadata=metadata)
        except FusionkitError as exc:  # a backbone without a spatial map: the prediction still stands
            logger.warning("no Grad-CAM: %s", exc)
    return CaseResult(prediction=prediction, overlays=overlays)


def gradcam_overlays(
    pipe: FusionPipeline, *, photos: Mapping[str, Image.Image | None], metadata: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Grad-CAM (:func:`fusionkit.evaluate.gradcam.gradcam`) of the predicted class over each photo
    given, blended onto the photo as the model saw it: uint8 (OVERLAY_SIZE, OVERLAY_SIZE, 3) arrays."""
    from matplotlib import colormaps

    preprocessing = pipe.model.preprocessing
    given = [m for m, p in photos.items() if p is not None]
    if preprocessing is None or not given:
        return {}
    item = lesion_input(
        derm=photos.get("derm"),
        clinical=photos.get("clinical"),
        metadata=dict(metadata),
        encoder=pipe.encoder,
        image_size=preprocessing.input_size,
        model_modalities=pipe.modalities,
        impute=True,
    )
    batch = collate_lesions([item], image_size=preprocessing.input_size)
    device_batch = normalize_batch(batch, mean=preprocessing.mean, std=preprocessing.std, device=pipe.device)
    jet = colormaps["jet"]
    out = {}
    for m in given:
        cam = gradcam(pipe.model, device_batch, modality=m)[0].cpu().numpy()
        picture = batch[m][0].permute(1, 2, 0).numpy().astype(np.float32) / 255.0
        heat = jet(cam)[..., :3].astype(np.float32)
        blended = (0.55 * picture + 0.45 * heat).clip(0.0, 1.0)
        image = Image.fromarray((blended * 255.0).round().astype(np.uint8))
        out[m] = np.asarray(image.resize((OVERLAY_SIZE, OVERLAY_SIZE), Image.Resampling.BILINEAR))
    return out


# -- what the page shows -----------------------------------------------------------------------------


def probability_table(prediction: LesionPrediction) -> str:
    """Every class with its probability (P_final, eq 6), highest first, as a Markdown table."""
    lines = ["| class | diagnosis | probability |", "| --- | --- | ---: |"]
    for name, p in sorted(prediction.probs.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {name} | {CLASS_FULL_NAMES.get(name, name)} | {p:.4f} |")
    return "\n".join(lines)


def decision_text(prediction: LesionPrediction) -> str:
    """The class(es) the pipeline's decision rule predicts, in one sentence."""
    named = [f"**{c}** ({CLASS_FULL_NAMES.get(c, c)})" for c in prediction.classes]
    rule = f"decision rule `{prediction.decision}`"
    if not named:
        top = prediction.top
        return (
            f"The {rule} predicts no class (none passes its threshold); the most probable is "
            f"**{top}** ({CLASS_FULL_NAMES.get(top, top)})."
        )
    return f"The {rule} predicts {', '.join(named)}."


def weights_table(prediction: LesionPrediction) -> str:
    """The adaptive gate's weights (eq 5) as "how much each input counted"; empty without a gate."""
    if prediction.weights is None:
        return ""
    lines = ["| input | weight | counted |", "| --- | --- | ---: |"]
    for key, value in prediction.weights.items():
        lines.append(f"| {WEIGHT_NAMES.get(key, key)} | {key} | {value:.1%} |")
    return "**How much each input counted** (the adaptive gate, eq 5):\n\n" + "\n".join(lines)


def inputs_text(prediction: LesionPrediction, *, photos: Sequence[str]) -> str:
    """Which inputs were absent and which fields were imputed, said beside the result."""
    notes = []
    for m in photos:
        if m in prediction.missing:
            notes.append(f"{PHOTO_NAMES[m]}: absent (not given; the model decided without it).")
    if "meta" in prediction.missing:
        notes.append("Patient record: absent.")
    if prediction.imputed:
        notes.append(
            "Imputed from the training statistics (left blank): "
            + ", ".join(f"`{f}`" for f in prediction.imputed)
            + " (age and MONET scores: the training mean; sex, site, skin tone: unknown)."
        )
    return "\n\n".join(notes) if notes else "Every input was given."


__all__ = [
    "CaseResult",
    "FormFields",
    "MAX_UPLOAD_BYTES",
    "RESEARCH_NOTE",
    "decision_text",
    "form_fields",
    "gradcam_overlays",
    "inputs_text",
    "metadata_record",
    "predict_case",
    "probability_table",
    "read_photo",
    "weights_table",
]
