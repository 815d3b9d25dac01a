"""The built-in components: their specs (what a YAML spec may say) and where their code lives.

Each spec class here is a component's constructor arguments as validated fields (the equations it
implements are named in its docstring and in its component's module). :func:`register_built_ins`
(called by :func:`fusionkit.registry.ensure_loaded`, not at import) registers every built-in under
its spec's ``kind``, naming the component class by its import path
(``"module:Class"``): the class, and torch with it, is imported when a model is first built, so
listing components or presets and writing the JSON schema never import torch (validating a spec
imports timm, or open_clip, for the image encoder's model-name check).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from fusionkit.components.base import DecisionSpec, FusionSpec, ImageEncoderSpec, MetadataEncoderSpec
from fusionkit.errors import require_extra
from fusionkit.registry import REGISTRIES, spec_kind_name

Activation = Literal["relu", "gelu", "silu", "tanh"]
"""The pointwise nonlinearities a spec may name."""


class TimmImageEncoderSpec(ImageEncoderSpec):
    """A timm backbone, ``timm.create_model(model_name, num_classes=0)``.

    Weights: ``pretrained: true`` loads the model's default pretrained tag from the Hugging Face hub
    (or its cache); ``weights_file`` loads a local ``.safetensors``/``.pth`` state dict instead.
    Asking for weights that cannot be had is an error, never a silent random initialisation.

    Foreign checkpoints (a PanDerm-style ViT): ``weights_prefix`` strips a key prefix first, and
    ``img_size`` builds a ViT for another input size, its position embedding resampled by timm.
    """

    kind: Literal["timm"] = "timm"
    model_name: str = "tf_efficientnetv2_s.in1k"
    """A timm model name, optionally with a pretrained tag (e.g. tf_efficientnetv2_s.in1k)."""
    pretrained: bool = True
    """Load the tag's pretrained weights from the Hugging Face hub (an error if they cannot be had)."""
    weights_file: Path | None = None
    """A local .safetensors/.pth state dict to load instead of hub weights."""
    drop_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout before the backbone's (removed) classifier."""
    drop_path_rate: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Stochastic depth rate of the backbone."""
    weights_prefix: str | None = Field(default=None, min_length=1)
    """A key prefix to strip from weights_file (e.g. module. or visual.); keys without it are dropped."""
    img_size: PositiveInt | None = None
    """The input size a ViT is built for (its position embedding is resampled to it); set the model's image_size alike."""

    @property
    def display_name(self) -> str:
        """The timm model name (with its pretrained tag, if any)."""
        return self.model_name

    @field_validator("model_name")
    @classmethod
    def _known_to_timm(cls, name: str) -> str:
        import timm  # here, not at import: listing presets or the schema needs no torch

        if not timm.is_model(name.split(".")[0]):
            close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ValueError(f"timm has no model {name!r}{hint}")
        arch, _, tag = name.partition(".")
        if tag and name not in timm.list_pretrained(name):
            tags = timm.list_pretrained(f"{arch}.*")
            raise ValueError(
                f"timm model {arch!r} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}"
            )
        return name


class OpenClipImageEncoderSpec(ImageEncoderSpec):
    """The vision tower of an open_clip model (a CLIP ViT such as DermLIP or MONET); the text tower is never built.

    ``model_name`` is an ``open_clip.list_models()`` architecture or ``hf-hub:org/name``; weights
    come from ``pretrained`` (an open_clip tag of the architecture, or true for an ``hf-hub:``
    model's own weights) or from a local ``weights_file`` (a whole CLIP checkpoint, whose
    ``visual.`` keys are taken, or the vision tower's own state dict). Needs the ``clip`` extra.
    """

    kind: Literal["open_clip"] = "open_clip"
    model_name: str = "ViT-B-16"
    """An open_clip architecture (open_clip.list_models()) or hf-hub:org/name."""
    pretrained: bool | str = False
    """An open_clip pretrained tag of model_name (e.g. openai), true for an hf-hub: model's weights, or false."""
    weights_file: Path | None = None
    """A local .safetensors/.pth checkpoint of the whole CLIP model or of its vision tower."""
    features: Literal["pooled", "pre_projection"] = "pooled"
    """pooled: the image embedding (encode_image); pre_projection: the pooled token before the projection (ViTs)."""
    image_size: PositiveInt | None = None
    """The input size to build the tower for (position embedding resized); default: the config's."""
    load_weights: bool = True
    """False: build the tower and its preprocessing without weights (a saved model's rebuild does)."""

    @property
    def display_name(self) -> str:
        """How reports name this encoder: its open_clip model name (with the tag, if any)."""
        return f"{self.model_name} ({self.pretrained})" if isinstance(self.pretrained, str) else self.model_name

    @field_validator("model_name")
    @classmethod
    def _known_to_open_clip(cls, name: str) -> str:
        if name.startswith("hf-hub:"):
            if not name.removeprefix("hf-hub:").strip():
                raise ValueError("hf-hub: needs a repository id, e.g. hf-hub:org/name")
            return name  # the hub is asked when the model is built
        open_clip = _open_clip()
        if name.replace("/", "-") not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if name.split("-")[0].lower() in m.lower()][:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ValueError(f"open_clip has no model {name!r}{hint}")
        return name

    @model_validator(mode="after")
    def _known_tag(self) -> OpenClipImageEncoderSpec:
        hub = self.model_name.startswith("hf-hub:")
        if hub and isinstance(self.pretrained, str):
            raise ValueError(f"pretrained must be true or false for {self.model_name} (the repository's own weights)")
        if not hub and self.pretrained is True:
            tags = _open_clip().list_pretrained_tags_by_model(self.model_name)
            raise ValueError(
                f"pretrained: name an open_clip tag of {self.model_name!r} ({', '.join(tags) or 'it has none'}) or false"
            )
        if not hub and isinstance(self.pretrained, str):
            tags = _open_clip().list_pretrained_tags_by_model(self.model_name)
            if self.pretrained not in tags:
                raise ValueError(
                    f"open_clip model {self.model_name!r} has no pretrained tag {self.pretrained!r}; "
                    f"its tags: {', '.join(tags) or 'none'}"
                )
        return self


def _open_clip() -> Any:
    """The open_clip module, or one line naming the extra that installs it."""
    return require_extra("open-clip-torch", what="the open_clip image encoder", module="open_clip")


class MLPMetadataEncoderSpec(MetadataEncoderSpec):
    """An MLP ``metadata_width -> hidden_dims... -> out_dim`` (the paper's D_M = 256).

    Each layer is Linear, optional LayerNorm, activation and dropout; the last layer ends with the
    activation too, so ``f_M`` is a feature vector like the pooled image features. The paper gives
    only D_M; the hidden widths, the norm and the dropout are fusionkit's choices.
    """

    kind: Literal["mlp"] = "mlp"
    hidden_dims: tuple[PositiveInt, ...] = (128,)
    """Widths of the hidden layers."""
    out_dim: PositiveInt = 256
    """D_M, the metadata feature width (256 in the paper)."""
    activation: Activation = "relu"
    """Nonlinearity after every layer."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout after every layer."""
    layer_norm: bool = True
    """LayerNorm after every Linear layer."""


class ConcatFusionSpec(FusionSpec):
    """Concatenate the image and metadata features; the joint width is D_I + D_M."""

    kind: Literal["concat"] = "concat"


class MMFASpec(FusionSpec):
    """MMFA, eqs 8-11: ``attention_heads`` (H), ``head_dim`` (d_h), ``out_dim`` (D_IM), ``activation`` (of g).

    The paper does not give H, d_h, D_IM or g's nonlinearity; fusionkit's defaults are H = 8,
    d_h = 64, D_IM = 512 and GELU. ``attention_heads`` was ``heads`` before (a name the model
    spec also gives its classifier heads); a spec that still says ``heads`` here is read as
    ``attention_heads``, with a ``FutureWarning``.
    """

    kind: Literal["mmfa"] = "mmfa"
    attention_heads: PositiveInt = 8
    """H, the number of attention heads (eq 8)."""
    head_dim: PositiveInt = 64
    """d_h, the width of each head's query, key and value (eq 8)."""
    out_dim: PositiveInt = 512
    """D_IM, the width of f_IM (eq 10-11)."""
    activation: Activation = "gelu"
    """The nonlinearity of g in eq 11."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_heads(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and "heads" in data):
            return data
        if "attention_heads" in data and data["attention_heads"] != data["heads"]:
            raise ValueError("heads is the old name of attention_heads; give attention_heads only")
        warnings.warn("fusion.heads is now fusion.attention_heads (H of eq 8)", FutureWarning, stacklevel=2)
        return {("attention_heads" if k == "heads" else k): v for k, v in data.items() if k != "attention_heads"}


class AttentionOnlySpec(MMFASpec):
    """MMFA without the residual path: ``f_IM = g(o)`` (Table 3, "Attention-only")."""

    kind: Literal["attention_only"] = "attention_only"  # type: ignore[assignment]


class SkipOnlySpec(FusionSpec):
    """MMFA's residual path alone: ``f_IM = W_skip [f_I || f_M]`` (Table 3, "Skip-only")."""

    kind: Literal["skip_only"] = "skip_only"
    out_dim: PositiveInt = 512
    """D_IM, the width of f_IM."""


class SingleDecisionSpec(DecisionSpec):
    """One branch's posterior is the final posterior; ``branch`` names it (``joint`` by default)."""

    kind: Literal["single"] = "single"
    branch: Literal["image", "joint", "meta"] = "joint"
    """The branch whose posterior is final (joint by default)."""
    has_weights: ClassVar[bool] = False

    def decision_branches(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """Just the deciding branch."""
        return (self.branch,)


class AverageDecisionSpec(DecisionSpec):
    """Equal weights over every branch the model has, renormalised over those present."""

    kind: Literal["average"] = "average"
    min_branches: ClassVar[int] = 2
    requirement: ClassVar[str] = "averages branch posteriors"


class ADFDecisionSpec(DecisionSpec):
    """The eq 5 gate: ``hidden_dim`` (width of W_1), ``activation`` (sigma), ``detach_logits``.

    The paper calls the gate "lightweight" without a width; fusionkit uses 64 and ReLU.
    ``detach_logits`` stops the gate's gradient into the branch heads (the paper does not: False).
    """

    kind: Literal["adf"] = "adf"
    required_branches: ClassVar[tuple[str, ...]] = ("image", "joint", "meta")
    requirement: ClassVar[str] = "(eq 5) weighs the image, joint and metadata branches"
    hidden_dim: PositiveInt = 64
    """Width of the gate's hidden layer (W_1 in eq 5)."""
    activation: Activation = "relu"
    """sigma of eq 5."""
    detach_logits: bool = False
    """Stop the gate's gradient into the branch heads (the paper does not)."""


BUILT_INS: tuple[tuple[str, type, str], ...] = (
    ("image_encoder", TimmImageEncoderSpec, "fusionkit.components.image_encoders:TimmImageEncoder"),
    ("image_encoder", OpenClipImageEncoderSpec, "fusionkit.components.open_clip_encoder:OpenClipImageEncoder"),
    ("metadata_encoder", MLPMetadataEncoderSpec, "fusionkit.components.metadata_encoders:MLPMetadataEncoder"),
    ("fusion", ConcatFusionSpec, "fusionkit.components.fusion.concat:ConcatFusion"),
    ("fusion", MMFASpec, "fusionkit.components.fusion.mmfa:MMFAFusion"),
    ("fusion", AttentionOnlySpec, "fusionkit.components.fusion.mmfa:AttentionOnlyFusion"),
    ("fusion", SkipOnlySpec, "fusionkit.components.fusion.mmfa:SkipOnlyFusion"),
    ("decision", SingleDecisionSpec, "fusionkit.components.decisions.single:SingleDecision"),
    ("decision", AverageDecisionSpec, "fusionkit.components.decisions.average:AverageDecision"),
    ("decision", ADFDecisionSpec, "fusionkit.components.decisions.adf:ADFDecision"),
)
"""(kind, spec class, ``"module:Class"`` of the component) of every built-in component."""


def register_built_ins() -> None:
    """Register :data:`BUILT_INS` (what :func:`fusionkit.registry.ensure_loaded` calls); a second call does nothing."""
    for kind, spec, component in BUILT_INS:
        if spec_kind_name(spec) not in REGISTRIES[kind].registered():
            REGISTRIES[kind].add(spec, component)
