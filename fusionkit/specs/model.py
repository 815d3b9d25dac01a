"""``ModelSpec``: everything needed to assemble any variant of the paper's Tables 2-3 and Figure 3.

The component slots (``image_encoder``, ``metadata_encoder``, ``fusion``, ``decision``) are unions
discriminated by ``kind`` over the registries' spec classes. The unions are rebuilt whenever a
component registers, so plugins and components registered at run time are accepted; an unknown
kind fails validation naming the slot and the registered kinds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

import fusionkit.components  # noqa: F401  (registers the built-in components)
from fusionkit.components.decisions.adf import ADFDecisionSpec
from fusionkit.components.fusion.mmfa import MMFASpec
from fusionkit.components.image_encoders import TimmImageEncoderSpec
from fusionkit.components.metadata_encoders import MLPMetadataEncoderSpec
from fusionkit.registry import REGISTRIES, on_register
from fusionkit.specs.base import (
    DecisionSpec,
    FrozenSpec,
    FusionSpec,
    ImageEncoderSpec,
    MetadataEncoderSpec,
)

Modality = Literal["derm", "clinical", "meta"]
"""The three inputs: dermoscopic image, clinical close-up image, patient metadata."""

MODALITIES: tuple[str, ...] = ("derm", "clinical", "meta")
IMAGE_MODALITIES: tuple[str, ...] = ("derm", "clinical")
BRANCHES: tuple[str, ...] = ("image", "joint", "meta")
"""The branches in the paper's order (I, IM, M): the order of the ADF weights alpha."""


class LossSpec(FrozenSpec):
    """Eq 7: ``CE(P_final, y) + lambda_joint L_IM + lambda_image L_I + lambda_meta L_M``.

    The paper fixes lambda_IM = 0.5 and lambda_I = lambda_M = 0.25. ``class_weights`` (one per
    class) weight every cross-entropy term; ``None`` is the paper's unweighted loss.

    Long-tail options (beyond the paper; all off by default, which is the paper's plain CE) apply
    to every cross-entropy term of eq 7 alike: ``focal_gamma`` (focal loss, Lin et al. 2017),
    ``label_smoothing`` and ``logit_adjustment`` (tau of Menon et al. 2021, with the training
    class prior ``class_prior`` that the trainer resolves from the training split).
    """

    lambda_joint: float = Field(default=0.5, ge=0.0)
    """lambda_IM of eq 7: weight of the joint head's cross-entropy L_IM."""
    lambda_image: float = Field(default=0.25, ge=0.0)
    """lambda_I of eq 7: weight of the image head's cross-entropy L_I."""
    lambda_meta: float = Field(default=0.25, ge=0.0)
    """lambda_M of eq 7: weight of the metadata head's cross-entropy L_M."""
    class_weights: tuple[Annotated[float, Field(gt=0.0)], ...] | None = None
    """One weight per class for every cross-entropy term; null = unweighted (the paper)."""
    focal_gamma: float = Field(default=0.0, ge=0.0)
    """Focal loss exponent gamma: each term is ``-(1 - p_y)^gamma log p_y``; 0 is plain CE."""
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    """epsilon: targets become ``(1 - epsilon) y + epsilon / N``; 0 is the paper's one-hot target."""
    logit_adjustment: float = Field(default=0.0, ge=0.0)
    """tau: every term scores ``log p + tau log pi`` (renormalised), pi the training class prior; 0 is off."""
    class_prior: tuple[Annotated[float, Field(gt=0.0)], ...] | None = None
    """pi, the training class frequencies (filled in from the training split when logit_adjustment > 0)."""


class HeadSpec(FrozenSpec):
    """The branch classifiers C_I, C_M, C_IM of eq 3: dropout then one Linear layer each."""

    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout before each branch classifier's Linear layer."""


class ModalityDropoutSpec(FrozenSpec):
    """Training-time modality dropout (beyond the paper).

    Each present modality of each training sample is dropped with probability ``p``; a sample never
    loses all its modalities. Off (p = 0) by default and never applied in eval mode.
    """

    p: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Probability of dropping each present modality of a training sample."""


def _slot_annotation(kind: str, optional: bool = False) -> Any:
    specs = tuple(REGISTRIES[kind].specs())
    union = Union[specs] if len(specs) > 1 else specs[0]  # noqa: UP007 - built at run time
    annotated = Annotated[union, Field(discriminator="kind")]
    return Optional[annotated] if optional else annotated  # noqa: UP007


class ModelSpec(FrozenSpec):
    """The full description of a fusion model. The defaults are the paper's JI-ADF (C+D+M).

    - ``modalities``: the inputs used, a subset of ``derm``, ``clinical``, ``meta`` (kept in that
      order). The image group is ``derm``/``clinical``; the metadata group is ``meta``.
    - ``image_encoder`` (M_I), ``metadata_encoder`` (M_M), ``fusion`` (FM, or ``null`` for no joint
      branch) and ``decision``: component specs, each chosen by its ``kind``.
    - ``loss``: eq 7's auxiliary weights and optional class weights.
    - ``num_classes``: N (11 for MILK10k); ``image_size``: the square input size (384 in the paper).
    """

    name: str | None = None
    """A label for the variant (the preset name for presets)."""
    modalities: tuple[Modality, ...] = MODALITIES
    """Inputs used: a subset of derm, clinical, meta (kept in that order)."""
    num_classes: PositiveInt = 11
    """N, the number of classes (11 for MILK10k)."""
    image_size: PositiveInt = 384
    """Square input size of both images (384 in the paper)."""
    image_encoder: ImageEncoderSpec = TimmImageEncoderSpec()
    """M_I of eq 1, per image; chosen by kind."""
    metadata_encoder: MetadataEncoderSpec = MLPMetadataEncoderSpec()
    """M_M of eq 1; chosen by kind."""
    fusion: FusionSpec | None = MMFASpec()
    """FM of eq 2 (null: no joint branch); chosen by kind."""
    decision: DecisionSpec = ADFDecisionSpec()
    """How the branch posteriors form P_final; chosen by kind."""
    heads: HeadSpec = HeadSpec()
    """The branch classifiers C_I, C_IM, C_M of eq 3."""
    loss: LossSpec = LossSpec()
    """Eq 7's auxiliary weights and optional class weights."""
    modality_dropout: ModalityDropoutSpec = ModalityDropoutSpec()
    """Training-time modality dropout (beyond the paper)."""

    @model_validator(mode="before")
    @classmethod
    def _default_slot_kinds(cls, data: Any) -> Any:
        """A slot given as a mapping without ``kind`` gets the default component's kind.

        ``image_encoder: {model_name: resnet50}`` means the ``timm`` encoder, as the defaults do.
        """
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for slot in _SLOTS:
            value = out.get(slot)
            default = cls.model_fields[slot].default
            if isinstance(value, dict) and "kind" not in value and default is not None:
                out[slot] = {"kind": default.kind, **value}
        return out

    @field_validator("modalities")
    @classmethod
    def _canonical_modalities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one modality is needed (derm, clinical, meta)")
        if len(set(value)) != len(value):
            raise ValueError(f"modalities repeat a name: {list(value)}")
        return tuple(m for m in MODALITIES if m in value)

    # -- derived structure ---------------------------------------------------------------------
    @property
    def image_modalities(self) -> tuple[str, ...]:
        """The image inputs used, in the order (derm, clinical)."""
        return tuple(m for m in self.modalities if m in IMAGE_MODALITIES)

    @property
    def uses_meta(self) -> bool:
        """Whether the metadata is an input."""
        return "meta" in self.modalities

    @property
    def available_branches(self) -> tuple[str, ...]:
        """Branches the inputs allow: image (an image is used), joint (a fusion), meta."""
        out = []
        if self.image_modalities:
            out.append("image")
        if self.fusion is not None:
            out.append("joint")
        if self.uses_meta:
            out.append("meta")
        return tuple(out)

    @property
    def decision_branches(self) -> tuple[str, ...]:
        """The branches the decision combines."""
        return self.decision.decision_branches(self.available_branches)

    @property
    def head_branches(self) -> tuple[str, ...]:
        """Branches that get a classifier head: those the decision uses or eq 7 supervises."""
        weights = dict(
            image=self.loss.lambda_image, joint=self.loss.lambda_joint, meta=self.loss.lambda_meta
        )
        used = set(self.decision_branches) | {b for b, w in weights.items() if w > 0}
        return tuple(b for b in BRANCHES if b in used)

    @model_validator(mode="after")
    def _combination_works(self) -> ModelSpec:
        images, meta = self.image_modalities, self.uses_meta
        if self.fusion is not None and not (images and meta):
            have = "metadata" if meta else "images"
            raise ValueError(
                f"fusion {self.fusion.kind!r} fuses image and metadata features, but the model "
                f"only uses {have} (modalities {list(self.modalities)}); set fusion: null or "
                "use both an image and 'meta'"
            )
        available = self.available_branches
        if self.fusion is None and images and meta and self.decision.kind == "single":
            raise ValueError(
                "with both images and metadata but no fusion block, a single head cannot see "
                "both groups; add a fusion block or use the 'average' decision"
            )
        if self.decision.kind == "adf" and available != BRANCHES:
            raise ValueError(
                "the 'adf' decision (eq 5) weighs the image, joint and metadata branches, so it "
                f"needs an image, 'meta' and a fusion block; this model has only {list(available)}"
            )
        if self.decision.kind == "average" and len(available) < 2:
            raise ValueError(
                f"the 'average' decision needs at least two branches; this model has {list(available)}"
            )
        missing = [b for b in self.decision_branches if b not in available]
        if missing:
            raise ValueError(
                f"decision {self.decision.kind!r} uses the {missing[0]!r} branch, which this "
                f"model does not have (branches: {list(available)})"
            )
        for branch, weight in (
            ("image", self.loss.lambda_image),
            ("joint", self.loss.lambda_joint),
            ("meta", self.loss.lambda_meta),
        ):
            if weight > 0 and branch not in available:
                raise ValueError(
                    f"loss.lambda_{branch} is {weight} but the model has no {branch} branch "
                    f"(branches: {list(available)}); set it to 0"
                )
        if self.loss.class_weights is not None and len(self.loss.class_weights) != self.num_classes:
            raise ValueError(
                f"loss.class_weights has {len(self.loss.class_weights)} values; expected one per "
                f"class ({self.num_classes})"
            )
        if self.loss.class_prior is not None and len(self.loss.class_prior) != self.num_classes:
            raise ValueError(
                f"loss.class_prior has {len(self.loss.class_prior)} values; expected one per "
                f"class ({self.num_classes})"
            )
        if self.modality_dropout.p > 0 and len(self.modalities) < 2:
            raise ValueError("modality_dropout needs at least two modalities to drop between")
        return self

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-compatible dict (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """YAML text that :meth:`from_yaml` turns back into an equal spec."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self, *, indent: int | None = 2) -> str:
        """JSON text that :meth:`from_json` turns back into an equal spec."""
        return self.model_dump_json(indent=indent)

    @classmethod
    def from_yaml(cls, text: str) -> ModelSpec:
        """Parse YAML text (a mapping) into a validated spec."""
        import yaml

        return cls.model_validate(yaml.safe_load(text))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse JSON text into a validated spec."""
        return cls.model_validate_json(text)


_SLOTS = {
    "image_encoder": ("image_encoder", False),
    "metadata_encoder": ("metadata_encoder", False),
    "fusion": ("fusion", True),
    "decision": ("decision", False),
}
_DEPENDENTS: list[type] = []


def track_spec_model(model: type) -> type:
    """Rebuild ``model`` (a pydantic model embedding :class:`ModelSpec`) when a component registers."""
    _DEPENDENTS.append(model)
    return model


def rebuild_spec_unions() -> None:
    """Re-open the slot unions over every registered component (runs after each registration)."""
    for field, (kind, optional) in _SLOTS.items():
        if not REGISTRIES[kind].specs():
            continue
        ModelSpec.__pydantic_fields__[field].annotation = _slot_annotation(kind, optional)
    ModelSpec.model_rebuild(force=True)
    for model in _DEPENDENTS:
        model.model_rebuild(force=True)


rebuild_spec_unions()
on_register(rebuild_spec_unions)


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`ModelSpec`, generated from the registered components."""
    return ModelSpec.model_json_schema()
