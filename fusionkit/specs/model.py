"""``ModelSpec``: everything needed to assemble any variant of the paper's Tables 2-3 and Figure 3.

The component slots (``image_encoder``, ``metadata_encoder``, ``fusion``, ``decision``) hold a
spec chosen by its ``kind``: a validator looks the kind up in the slot's registry when a spec is
validated, so components registered at any time (plugins included) are accepted with nothing to
rebuild, and an unknown kind fails validation naming the slot and the registered kinds. The JSON
schema is generated the same way, from the registries at the time it is asked for.

The cross-field checks read what the components declare, never their kind names: a fusion block
(eq 2) takes the image and metadata features and yields the joint branch; a decision declares the
branches it combines (``decision_branches``), those it requires (``required_branches``) and the
fewest it can combine (``min_branches``) on its spec class (see :class:`~fusionkit.specs.DecisionSpec`).
"""

from __future__ import annotations

from functools import cache
from types import GenericAlias
from typing import Annotated, Any, Union

from pydantic import Field, PositiveInt, SerializeAsAny, TypeAdapter, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fusionkit.components.base import (
    ComponentSpec,
    DecisionSpec,
    FrozenSpec,
    FusionSpec,
    ImageEncoderSpec,
    MetadataEncoderSpec,
)
from fusionkit.components.catalog import (
    ADFDecisionSpec,
    MLPMetadataEncoderSpec,
    MMFASpec,
    TimmImageEncoderSpec,
)
from fusionkit.data.schema import IMAGE_MODALITIES, MODALITIES, Modality
from fusionkit.registry import REGISTRIES

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


def _slot_union(slot: str) -> Any:
    """The union of the registered spec classes of ``slot``, discriminated by ``kind``."""
    specs = tuple(REGISTRIES[slot].specs())
    union = Union[specs] if len(specs) > 1 else specs[0]  # noqa: UP007 - built at run time
    return Annotated[union, Field(discriminator="kind")]


class _RegisteredKinds:
    """JSON-schema marker of a slot: the schema lists the kinds registered when it is generated."""

    def __init__(self, slot: str) -> None:
        self.slot = slot

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> Any:
        return handler(TypeAdapter(_slot_union(self.slot)).core_schema)


@cache
def _adapter(spec: type) -> TypeAdapter:
    # validating {kind: data} puts the kind in the error path, as in "fusion.mmfa.num_head"
    keyed: Any = GenericAlias(dict, (str, spec))  # dict[str, spec]: a type built at run time
    return TypeAdapter(keyed)


def _slot_spec(slot: str, value: Any, default_kind: str | None) -> Any:
    """Validate a slot's value with the spec class its ``kind`` (or the slot's default) names."""
    if not isinstance(value, dict | ComponentSpec):
        return value  # None, or a wrong type that the slot's base class rejects
    reg = REGISTRIES[slot]
    kind = value.kind if isinstance(value, ComponentSpec) else value.get("kind", default_kind)
    if not isinstance(kind, str) or kind not in reg:
        raise PydanticCustomError(
            "union_tag_invalid",
            "Input tag '{tag}' found using 'kind' does not match any of the expected tags: {expected_tags}",
            {"tag": str(kind), "expected_tags": ", ".join(repr(n) for n in reg.names())},
        )
    spec = reg.get(kind).spec
    if isinstance(value, spec):
        return value
    data = value.model_dump() if isinstance(value, ComponentSpec) else {**value, "kind": kind}
    return _adapter(spec).validate_python({kind: data})[kind]


# A slot holds any registered spec class of its kind: ModelSpec._registered_kind validates it by its
# ``kind``, it serialises as its own class, and the JSON schema lists the kinds registered at the time.
ImageEncoderSlot = Annotated[SerializeAsAny[ImageEncoderSpec], _RegisteredKinds("image_encoder")]
"""The type of ``ModelSpec.image_encoder``: any registered image-encoder spec."""
MetadataEncoderSlot = Annotated[SerializeAsAny[MetadataEncoderSpec], _RegisteredKinds("metadata_encoder")]
"""The type of ``ModelSpec.metadata_encoder``: any registered metadata-encoder spec."""
FusionSlot = Annotated[SerializeAsAny[FusionSpec], _RegisteredKinds("fusion")]
"""The type of ``ModelSpec.fusion``: any registered fusion spec."""
DecisionSlot = Annotated[SerializeAsAny[DecisionSpec], _RegisteredKinds("decision")]
"""The type of ``ModelSpec.decision``: any registered decision spec."""


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
    image_size: int = Field(default=384, ge=1, le=4096)
    """Square input size of both images (384 in the paper). Kept on the model spec, not the data
    section: the trained weights, the ONNX export's input signature and inference's preprocessing
    must all agree with it, so it travels with the model."""
    image_encoder: ImageEncoderSlot = TimmImageEncoderSpec()
    """M_I of eq 1, per image; chosen by kind."""
    metadata_encoder: MetadataEncoderSlot = MLPMetadataEncoderSpec()
    """M_M of eq 1; chosen by kind."""
    fusion: FusionSlot | None = MMFASpec()
    """FM of eq 2 (null: no joint branch); chosen by kind."""
    decision: DecisionSlot = ADFDecisionSpec()
    """How the branch posteriors form P_final; chosen by kind."""
    heads: HeadSpec = HeadSpec()
    """The branch classifiers C_I, C_IM, C_M of eq 3."""
    loss: LossSpec = LossSpec()
    """Eq 7's auxiliary weights and optional class weights."""
    modality_dropout: ModalityDropoutSpec = ModalityDropoutSpec()
    """Training-time modality dropout (beyond the paper)."""

    @field_validator("image_encoder", "metadata_encoder", "fusion", "decision", mode="before")
    @classmethod
    def _registered_kind(cls, value: Any, info: Any) -> Any:
        """Look the slot's ``kind`` up in its registry; a mapping without ``kind`` gets the default's.

        ``image_encoder: {model_name: resnet50}`` means the ``timm`` encoder, as the defaults do.
        """
        default = cls.model_fields[info.field_name].default
        return _slot_spec(info.field_name, value, default.kind if default is not None else None)

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
        weights = dict(image=self.loss.lambda_image, joint=self.loss.lambda_joint, meta=self.loss.lambda_meta)
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
        self._decision_fits(images=bool(images), meta=meta)
        available = self.available_branches
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
                f"loss.class_prior has {len(self.loss.class_prior)} values; expected one per class ({self.num_classes})"
            )
        if self.modality_dropout.p > 0 and len(self.modalities) < 2:
            raise ValueError("modality_dropout needs at least two modalities to drop between")
        return self

    def _decision_fits(self, *, images: bool, meta: bool) -> None:
        """The decision's declarations (:class:`~fusionkit.specs.DecisionSpec`) against the branches."""
        decision, available = self.decision, self.available_branches
        kind = decision.kind
        needed = [b for b in type(decision).required_branches if b not in available]
        if needed:
            why = f" {type(decision).requirement}," if type(decision).requirement else ""
            raise ValueError(
                f"the {kind!r} decision{why} so it needs "
                f"{_describe(type(decision).required_branches)}; this model has only {list(available)}"
            )
        least = type(decision).min_branches
        if len(available) < least:
            raise ValueError(
                f"the {kind!r} decision needs at least {_NUMBERS.get(least, least)} branches; "
                f"this model has {list(available)}"
            )
        used = decision.decision_branches(available)
        if self.fusion is None and images and meta and len({*used} & {"image", "meta"}) < 2:
            raise ValueError(
                f"with both images and metadata but no fusion block, the {kind!r} decision uses "
                f"only {list(used)}: a single head cannot see both groups; add a fusion block or "
                "use the 'average' decision"
            )

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


_NUMBERS = {2: "two", 3: "three"}
_NEEDS = {"image": "an image", "joint": "a fusion block", "meta": "'meta'"}


def _describe(branches: tuple[str, ...]) -> str:
    """``("image", "joint", "meta")`` -> "an image, 'meta' and a fusion block" (inputs first)."""
    words = [_NEEDS[b] for b in ("image", "meta", "joint") if b in branches]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def spec_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`ModelSpec`, generated from the registered components."""
    return ModelSpec.model_json_schema()
