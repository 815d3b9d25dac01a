"""The assembled fusion model: encoders -> fusion -> branch heads -> decision (Section 2.1).

``FusionModel`` is built from a :class:`~fusionkit.specs.ModelSpec` by :func:`build_model` /
:meth:`FusionModel.from_spec`, or composed from built modules (``FusionModel(num_classes=...,
image_encoders=..., ...)``). It reports the image preprocessing its encoders declare
(:attr:`FusionModel.preprocessing`). Its forward takes the batch dict (``derm``, ``clinical``: (B, 3, H, W); ``meta``: (B, F); optional
``present``: a dict of (B,) bool masks per modality) and returns a :class:`FusionOutput`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from fusionkit.components.contract import backbone_layers, declared_preprocessing, set_grad_checkpointing
from fusionkit.data.preprocessing import ImagePreprocessing
from fusionkit.errors import ConfigError, MissingModalityError
from fusionkit.registry import get_registry
from fusionkit.specs.model import BRANCHES, IMAGE_MODALITIES, ModelSpec


@dataclass
class FusionOutput:
    """What a :class:`FusionModel` returns for a batch.

    - ``probs`` (B, N): the final posterior P_final (eq 6), rows on the simplex.
    - ``log_probs`` (B, N): its logarithm, computed stably in log space (used by the loss).
    - ``logits``: each branch's logits z_k (B, N), by branch name (``image``, ``joint``, ``meta``).
    - ``weights`` (B, 3) or None: the fusion weights (alpha_I, alpha_IM, alpha_M), 0 for a branch
      the sample lacks or the decision does not use; None for a decision without weights.
    - ``features``: f_I, f_M, f_IM by branch name.
    - ``present``: per branch, which samples have it (B,) bool.
    """

    probs: torch.Tensor
    log_probs: torch.Tensor
    logits: dict[str, torch.Tensor]
    weights: torch.Tensor | None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    present: dict[str, torch.Tensor] = field(default_factory=dict)


def module_width(module: nn.Module, what: str) -> int:
    """``module.out_dim``, the width every built module reports; one line naming it if it does not."""
    width = getattr(module, "out_dim", None)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(
            f"{what} ({type(module).__name__}) reports no out_dim: set an int `out_dim` attribute "
            f"(its output width); got {width!r}"
        )
    return width


def _probe(module: nn.Module, inputs: tuple[torch.Tensor, ...], *, what: str, given: str, out_dim: int) -> None:
    """Run ``module`` once on zeros of the widths it will see (eval mode, no grad) and check its output
    width, so a width mismatch is a one-line :class:`ConfigError` at construction, not a shape error later."""
    param = next(iter(module.parameters()), None)
    if param is not None:
        inputs = tuple(x.to(device=param.device, dtype=param.dtype) for x in inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(*inputs)
    except Exception as exc:  # noqa: BLE001 - any failure here is the same width mismatch
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"{what} ({type(module).__name__}) does not accept {given}: {type(exc).__name__}: {reason}"
        ) from None
    finally:
        module.train(was_training)
    shape = tuple(getattr(out, "shape", ()))
    if shape != (inputs[0].shape[0], out_dim):
        raise ConfigError(
            f"{what} ({type(module).__name__}) returned shape {shape} for {given}; expected (B, {out_dim})"
        )


class ImageStream(nn.Module):
    """M_I of eq 1: one backbone per image (or one shared), missing images as learned embeddings.

    ``encoders`` maps each image modality (``derm``, ``clinical``) to its encoder; the same module
    object under both names is one shared backbone (stored once, as ``encoders["shared"]``). Every
    encoder reports ``out_dim`` (all alike) and declares its ``preprocessing``
    (:class:`~fusionkit.components.contract.ImageEncoder`); both images go through one transform, so
    the encoders must declare the same mean, std and interpolation. ``f_I`` is the concatenation
    (``combine="concat"``) or mean of the per-image features.
    """

    def __init__(self, *, encoders: Mapping[str, nn.Module], combine: str = "concat", label: str = "image encoder"):
        super().__init__()
        unknown = sorted(set(encoders) - set(IMAGE_MODALITIES))
        if unknown or not encoders:
            raise ConfigError(
                f"image_encoders must map image modalities {list(IMAGE_MODALITIES)} to encoders; got {sorted(encoders)}"
            )
        if combine not in ("concat", "mean"):
            raise ConfigError(f"combine must be 'concat' or 'mean', got {combine!r}")
        self.modalities = tuple(m for m in IMAGE_MODALITIES if m in encoders)
        self.label = label
        first = encoders[self.modalities[0]]
        self.shared = len(self.modalities) > 1 and all(encoders[m] is first for m in self.modalities)
        self.combine = combine
        if self.shared:
            self.encoders = nn.ModuleDict({"shared": first})
        else:
            self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        widths = {m: module_width(encoders[m], f"{label} for {m!r}") for m in self.modalities}
        declared = {m: declared_preprocessing(encoders[m], name=f"{label} for {m!r}") for m in self.modalities}
        if len(set(widths.values())) > 1:
            raise ConfigError(f"the image encoders report different out_dim {widths}; f_I needs one width")
        normalisations = {m: (p.mean, p.std, p.interpolation) for m, p in declared.items()}
        if len(set(normalisations.values())) > 1:
            said = "; ".join(f"{m}: mean {v[0]}, std {v[1]}, {v[2]}" for m, v in normalisations.items())
            raise ConfigError(
                f"the image encoders declare different preprocessing ({said}); both images go through "
                "one transform, so use encoders that agree"
            )
        self.preprocessing: ImagePreprocessing = declared[self.modalities[0]]
        """The preprocessing the encoders declare (at their native ``input_size``)."""
        width = widths[self.modalities[0]]
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(width)) for m in self.modalities})
        self.width = width
        multiplier = len(self.modalities) if self.combine == "concat" else 1
        self.out_dim = width * multiplier

    def backbone_layers(self) -> dict[str, list[list[str]]]:
        """Per encoder (``derm``, ``clinical``, or ``shared``), its backbone parameters' names in this
        stream (``encoders.<key>.<name>``) by layer, input to output
        (:func:`~fusionkit.components.contract.backbone_layers`)."""
        return {
            key: [
                [f"encoders.{key}.{n}" for n in group] for group in backbone_layers(enc, name=f"{self.label} {key!r}")
            ]
            for key, enc in self.encoders.items()
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing on (or off) in every encoder
        (:func:`~fusionkit.components.contract.set_grad_checkpointing`)."""
        for key, enc in self.encoders.items():
            set_grad_checkpointing(enc, name=f"{self.label} {key!r}", enable=enable)

    def forward(self, batch: dict[str, Any], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """f_I (B, out_dim)."""
        if self.shared:
            images = torch.cat([batch[m] for m in self.modalities], dim=0)
            feats = self.encoders["shared"](images).chunk(len(self.modalities), dim=0)
        else:
            feats = [self.encoders[m](batch[m]) for m in self.modalities]
        parts = [
            torch.where(present[m][:, None], f, self.missing[m].to(f.dtype).expand_as(f))
            for m, f in zip(self.modalities, feats, strict=True)
        ]
        if self.combine == "concat":
            return torch.cat(parts, dim=-1)
        return torch.stack(parts, dim=0).mean(dim=0)


class MetaStream(nn.Module):
    """M_M of eq 1: the metadata encoder, with a learned embedding for missing metadata."""

    def __init__(self, *, encoder: nn.Module, label: str = "metadata encoder") -> None:
        super().__init__()
        self.encoder = encoder
        self.out_dim = module_width(encoder, label)
        self.missing = nn.Parameter(torch.zeros(self.out_dim))

    def forward(self, meta: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """f_M (B, out_dim)."""
        f = self.encoder(meta)
        return torch.where(present[:, None], f, self.missing.to(f.dtype).expand_as(f))


class ClassifierHead(nn.Module):
    """A branch classifier C_k of eq 3: dropout then Linear to N logits."""

    def __init__(self, *, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)
        self.out_dim = num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, N)."""
        return self.linear(self.dropout(features))


_WIDTH_HINT = "fusionkit.data.MetadataEncoder.metadata_width"


class FusionModel(nn.Module):
    """A multimodal classifier: image encoders and metadata encoder -> fusion -> branch heads -> decision.

    Two ways to build one:

    - **from a spec** (the serialisable path): :meth:`from_spec` / :func:`build_model` (or
      ``FusionModel(spec, metadata_width=...)``) build every component from the registry;
      ``model.spec`` is that :class:`ModelSpec`.
    - **from built modules** (torchmultimodal style, no registration needed)::

          model = FusionModel(
              num_classes=11,
              image_encoders={"derm": enc_d, "clinical": enc_c},  # the same object twice: shared
              metadata_encoder=meta_enc,  # (B, metadata_width) -> (B, out_dim)
              fusion=my_block,  # forward(f_image, f_meta) -> (B, out_dim)
              decision=fk.components.decisions.adf.ADFDecision(num_classes=11, branches=BRANCHES),
          )

      ``model.spec`` is ``None``: such a model can be trained and saved as weights, but it cannot
      be rebuilt from a file without the code that built its modules.

    Every module reports its output width ``out_dim``; image encoders also declare their
    ``preprocessing`` (:class:`~fusionkit.components.contract.ImageEncoder`). Widths are checked when
    the model is built (the fusion block, the heads and the metadata encoder are run once on zeros),
    each mismatch a one-line :class:`~fusionkit.errors.ConfigError`.

    Keyword arguments of the module path:

    - ``num_classes``: N.
    - ``image_encoders``: ``{"derm": ..., "clinical": ...}`` (either or both); ``combine``: how the
      image features form f_I, ``concat`` (default) or ``mean``.
    - ``metadata_encoder`` and ``metadata_width`` (its input width; default: the encoder's ``metadata_width``).
    - ``fusion``: the fusion block (eq 2), taking ``(f_image, f_meta)``; needs images and metadata.
    - ``heads``: the branch classifiers by branch name (``image``, ``joint``, ``meta``); default: a
      :class:`ClassifierHead` (``head_dropout``) for every branch the model has.
    - ``decision``: ``forward(logits, present) -> (B, K)`` log weights over ``decision.branches``;
      ``has_weights``: whether its weights are reported (default: the decision's ``has_weights``
      attribute, else whether it combines more than one branch).
    - ``image_size``: the square input size (default: the encoders' declared ``input_size``).
    - ``modality_dropout``: training-time modality dropout probability (0: off).

    ``metadata_width`` is the width of the encoded metadata vector M (its encoder's input); the
    feature widths D_I, D_M, D_IM of eqs 1-2 are ``feature_dims["image"|"meta"|"joint"]``.
    """

    def __init__(
        self,
        spec: ModelSpec | dict[str, Any] | None = None,
        /,
        *,
        metadata_width: int | None = None,
        num_classes: int | None = None,
        image_encoders: Mapping[str, nn.Module] | None = None,
        combine: Literal["concat", "mean"] = "concat",
        metadata_encoder: nn.Module | None = None,
        fusion: nn.Module | None = None,
        heads: Mapping[str, nn.Module] | None = None,
        head_dropout: float = 0.0,
        decision: nn.Module | None = None,
        has_weights: bool | None = None,
        image_size: int | None = None,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec: ModelSpec | None = None
        """The spec the model was built from; ``None`` for a model composed from modules."""
        if spec is not None:
            given = [
                name
                for name, value in (
                    ("num_classes", num_classes),
                    ("image_encoders", image_encoders),
                    ("metadata_encoder", metadata_encoder),
                    ("fusion", fusion),
                    ("heads", heads),
                    ("decision", decision),
                    ("has_weights", has_weights),
                    ("image_size", image_size),
                    ("combine", None if combine == "concat" else combine),
                    ("head_dropout", head_dropout or None),
                    ("modality_dropout", modality_dropout or None),
                )
                if value is not None
            ]
            if given:
                raise ConfigError(f"give a spec or built modules, not both (got a spec and {', '.join(given)})")
            if not isinstance(spec, ModelSpec):
                spec = ModelSpec.model_validate(spec)
            self._assemble_from_spec(spec, metadata_width)
            return
        if num_classes is None or decision is None:
            raise ConfigError("a FusionModel needs a spec, or num_classes= and decision= with the modules it combines")
        self._assemble(
            num_classes=num_classes,
            image_encoders=image_encoders,
            combine=combine,
            metadata_encoder=metadata_encoder,
            metadata_width=metadata_width,
            fusion=fusion,
            heads=heads,
            head_dropout=head_dropout,
            decision=decision,
            has_weights=has_weights,
            image_size=image_size,
            modality_dropout=modality_dropout,
            probe=True,
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec | dict[str, Any], *, metadata_width: int | None = None) -> FusionModel:
        """The model a spec describes, every component built from its registry (see :func:`build_model`)."""
        return cls(spec, metadata_width=metadata_width)

    def _assemble_from_spec(self, spec: ModelSpec, metadata_width: int | None) -> None:
        """Build the spec's components (in a fixed order, so a seed gives the same weights) and assemble them."""
        if spec.uses_meta and metadata_width is None:
            raise ConfigError(
                "the metadata encoder's input width is unknown: pass metadata_width= to "
                f"build_model (the width of the encoded metadata, {_WIDTH_HINT})"
            )
        enc_spec = spec.image_encoder
        image_encoders: dict[str, nn.Module] = {}
        if spec.image_modalities:
            component = get_registry("image_encoder").get(enc_spec.kind).component
            if enc_spec.shared:
                encoder = component(**enc_spec.component_kwargs())
                image_encoders = dict.fromkeys(spec.image_modalities, encoder)
            else:
                image_encoders = {m: component(**enc_spec.component_kwargs()) for m in spec.image_modalities}
        widths: dict[str, int] = {}
        if image_encoders:
            width = module_width(next(iter(image_encoders.values())), f"image encoder {enc_spec.kind!r}")
            widths["image"] = width * (len(spec.image_modalities) if enc_spec.combine == "concat" else 1)
        metadata_encoder = None
        if spec.uses_meta:
            meta_spec = spec.metadata_encoder
            component = get_registry("metadata_encoder").get(meta_spec.kind).component
            metadata_encoder = component(metadata_width=metadata_width, **meta_spec.component_kwargs())
            widths["meta"] = module_width(metadata_encoder, f"metadata encoder {meta_spec.kind!r}")
        fusion = None
        if spec.fusion is not None:
            component = get_registry("fusion").get(spec.fusion.kind).component
            fusion = component(image_dim=widths["image"], meta_dim=widths["meta"], **spec.fusion.component_kwargs())
            widths["joint"] = module_width(fusion, f"fusion {spec.fusion.kind!r}")
        heads = {
            b: ClassifierHead(in_dim=widths[b], num_classes=spec.num_classes, dropout=spec.heads.dropout)
            for b in spec.head_branches
        }
        decision = (
            get_registry("decision")
            .get(spec.decision.kind)
            .component(
                num_classes=spec.num_classes, branches=spec.decision_branches, **spec.decision.component_kwargs()
            )
        )
        self._assemble(
            num_classes=spec.num_classes,
            image_encoders=image_encoders or None,
            combine=enc_spec.combine,
            metadata_encoder=metadata_encoder,
            metadata_width=metadata_width if spec.uses_meta else None,
            fusion=fusion,
            heads=heads,
            head_dropout=spec.heads.dropout,
            decision=decision,
            has_weights=type(spec.decision).has_weights,
            image_size=spec.image_size,
            modality_dropout=spec.modality_dropout.p,
            probe=False,
            labels={
                "image": f"image encoder {enc_spec.kind!r}",
                "meta": f"metadata encoder {spec.metadata_encoder.kind!r}",
                "fusion": f"fusion {spec.fusion.kind!r}" if spec.fusion is not None else "fusion",
            },
        )
        self.spec = spec

    def _assemble(
        self,
        *,
        num_classes: int,
        image_encoders: Mapping[str, nn.Module] | None,
        combine: str,
        metadata_encoder: nn.Module | None,
        metadata_width: int | None,
        fusion: nn.Module | None,
        heads: Mapping[str, nn.Module] | None,
        head_dropout: float,
        decision: nn.Module,
        has_weights: bool | None,
        image_size: int | None,
        modality_dropout: float,
        probe: bool,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Check the built modules against each other and hold them (the state-dict layout of both paths)."""
        labels = {"image": "image encoder", "meta": "metadata encoder", "fusion": "fusion block", **(labels or {})}
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ConfigError(f"modality_dropout must be in [0, 1), got {modality_dropout!r}")
        self.num_classes = num_classes
        widths: dict[str, int] = {}
        self.image_stream = None
        if image_encoders:
            self.image_stream = ImageStream(encoders=image_encoders, combine=combine, label=labels["image"])
            widths["image"] = self.image_stream.out_dim
        self.image_modalities: tuple[str, ...] = self.image_stream.modalities if self.image_stream else ()
        """The image inputs used, in the order (derm, clinical)."""
        self.meta_stream = None
        if metadata_encoder is not None:
            declared = getattr(metadata_encoder, "metadata_width", None)
            if metadata_width is None:
                metadata_width = declared
            if not isinstance(metadata_width, int) or isinstance(metadata_width, bool) or metadata_width < 1:
                raise ConfigError(
                    f"the metadata encoder's input width is unknown: pass metadata_width= (the width of "
                    f"the encoded metadata, {_WIDTH_HINT}) or give the encoder an int metadata_width"
                )
            if isinstance(declared, int) and declared != metadata_width:
                raise ConfigError(
                    f"metadata_width is {metadata_width} but the metadata encoder's metadata_width is {declared}"
                )
            self.meta_stream = MetaStream(encoder=metadata_encoder, label=labels["meta"])
            widths["meta"] = self.meta_stream.out_dim
            if probe:
                _probe(
                    metadata_encoder,
                    (torch.zeros(2, metadata_width),),
                    what=labels["meta"],
                    given=f"metadata of width {metadata_width}",
                    out_dim=widths["meta"],
                )
        elif metadata_width is not None:
            raise ConfigError("metadata_width is given but there is no metadata_encoder")
        self.metadata_width = metadata_width
        """Width of the encoded metadata vector M (None without metadata)."""
        self.modalities: tuple[str, ...] = (*self.image_modalities, *(("meta",) if self.meta_stream else ()))
        """The inputs used, in the order (derm, clinical, meta)."""
        if not self.modalities:
            raise ConfigError("a FusionModel needs image_encoders, a metadata_encoder, or both")
        if modality_dropout > 0 and len(self.modalities) < 2:
            raise ConfigError("modality_dropout needs at least two modalities to drop between")
        self.modality_dropout = modality_dropout
        """Probability of dropping each present modality of a training sample (0: off)."""
        self.fusion = fusion
        if fusion is not None:
            if "image" not in widths or "meta" not in widths:
                raise ConfigError(
                    f"the {labels['fusion']} fuses image and metadata features, but the model has only "
                    f"{list(self.modalities)}; drop the fusion block or add the missing encoder"
                )
            widths["joint"] = module_width(fusion, labels["fusion"])
            if probe:
                _probe(
                    fusion,
                    (torch.zeros(2, widths["image"]), torch.zeros(2, widths["meta"])),
                    what=labels["fusion"],
                    given=f"f_I of width {widths['image']} and f_M of width {widths['meta']}",
                    out_dim=widths["joint"],
                )
        available = tuple(b for b in BRANCHES if b in widths)
        if heads is None:
            heads = {
                b: ClassifierHead(in_dim=widths[b], num_classes=num_classes, dropout=head_dropout) for b in available
            }
        extra = [b for b in heads if b not in available]
        if extra:
            raise ConfigError(f"heads has a {extra[0]!r} head but the model's branches are {list(available)}")
        for branch, head in heads.items():
            width = module_width(head, f"the {branch!r} head")
            if width != num_classes:
                raise ConfigError(f"the {branch!r} head has out_dim {width}; expected num_classes = {num_classes}")
            if probe:
                _probe(
                    head,
                    (torch.zeros(2, widths[branch]),),
                    what=f"the {branch!r} head",
                    given=f"features of width {widths[branch]}",
                    out_dim=num_classes,
                )
        self.heads = nn.ModuleDict({b: heads[b] for b in BRANCHES if b in heads})
        branches = getattr(decision, "branches", None)
        if not isinstance(branches, tuple | list) or not branches:
            raise ConfigError(
                f"the decision ({type(decision).__name__}) has no `branches`: set the tuple of branch names it "
                f"combines (from {list(available)})"
            )
        lacking = [b for b in branches if b not in self.heads]
        if lacking:
            raise ConfigError(
                f"the decision combines the {lacking[0]!r} branch, which has no head (heads: {list(self.heads)})"
            )
        self.decision_branches: tuple[str, ...] = tuple(branches)
        """The branches the decision combines."""
        self.decision = decision
        if has_weights is None:
            has_weights = bool(getattr(decision, "has_weights", len(branches) > 1))
        self.has_weights = has_weights
        """Whether ``FusionOutput.weights`` reports the decision's weights (None otherwise)."""
        self.feature_dims = widths
        if image_size is None and self.image_stream is not None:
            image_size = self.image_stream.preprocessing.input_size
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        ):
            raise ConfigError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size: int | None = image_size if self.image_stream is not None else None
        """The square input size of both images (``ModelSpec.image_size``); None without images."""
        self.validate_presence = True
        """Check that every sample has a branch to decide on (a host sync; the trainer turns it off
        after checking the masks on the CPU, so CUDA steps stay asynchronous and graph-capturable)."""

    @property
    def preprocessing(self) -> ImagePreprocessing | None:
        """The image preprocessing this model needs, as its image encoders declare it, at
        :attr:`image_size`: the transforms, the trainer and evaluation read it from here.

        Both images share it (the encoders must agree, see :class:`ImageStream`). ``None`` for a model
        without image inputs.
        """
        if self.image_stream is None or self.image_size is None:
            return None
        return self.image_stream.preprocessing.with_size(self.image_size)

    def backbone_layers(self) -> dict[str, list[list[str]]]:
        """The image backbones' parameter names in this model (``image_stream.encoders.<key>....``),
        per encoder and by layer from input to output, as each encoder's contract says
        (:meth:`ImageEncoder.backbone_layers <fusionkit.components.contract.ImageEncoder.backbone_layers>`);
        empty without images. Everything else (fusion, heads, missing-modality embeddings, decision) is
        not backbone."""
        if self.image_stream is None:
            return {}
        return {
            key: [[f"image_stream.{n}" for n in group] for group in layers]
            for key, layers in self.image_stream.backbone_layers().items()
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing on (or off) in every image encoder; a
        :class:`~fusionkit.errors.ConfigError` names an encoder that cannot (``train.grad_checkpointing``)."""
        if self.image_stream is not None:
            self.image_stream.set_grad_checkpointing(enable)

    # ------------------------------------------------------------------------------------------
    def _batch_size(self, batch: dict[str, Any]) -> tuple[int, torch.device]:
        for m in self.modalities:
            if m in batch:
                return batch[m].shape[0], batch[m].device
        raise MissingModalityError(
            f"the batch has none of this model's inputs {list(self.modalities)}; found keys {sorted(batch)}"
        )

    def presence(self, batch: dict[str, Any], *, dropout: bool = True) -> dict[str, torch.Tensor]:
        """Per modality, which samples have it: the batch's ``present`` masks (all True when absent).

        In training mode (and with ``dropout``), the spec's modality dropout is applied on top.
        """
        size, device = self._batch_size(batch)
        given = batch.get("present") or {}
        present: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            if m not in batch:
                raise MissingModalityError(
                    f"the batch has no {m!r} tensor; this model uses {list(self.modalities)} "
                    f"(send a zero tensor with present[{m!r}] = False for absent inputs)"
                )
            mask = given.get(m)
            if mask is None:
                mask = torch.ones(size, dtype=torch.bool, device=device)
            else:
                mask = torch.as_tensor(mask, device=device).reshape(size).bool()
            present[m] = mask
        if dropout and self.training and self.modality_dropout > 0:
            present = self._drop_modalities(present)
        return present

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stacked = torch.stack([present[m] for m in self.modalities], dim=1)
        keep = torch.rand(stacked.shape, device=stacked.device) >= self.modality_dropout
        keep &= stacked
        lost_all = ~keep.any(dim=1) & stacked.any(dim=1)
        # keep one random present modality for samples that would otherwise lose everything
        scores = torch.rand(stacked.shape, device=stacked.device).masked_fill(~stacked, -1.0)
        rescue = nn.functional.one_hot(scores.argmax(dim=1), stacked.shape[1]).bool()
        keep |= rescue & lost_all[:, None]
        return {m: keep[:, i] for i, m in enumerate(self.modalities)}

    def branch_presence(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per branch, which samples have it: image (any image), meta, joint (any modality)."""
        out = {}
        images = [present[m] for m in self.image_modalities]
        any_modality = torch.stack(list(present.values()), dim=0).any(dim=0)
        if images:
            out["image"] = torch.stack(images, dim=0).any(dim=0)
        if "meta" in present:
            out["meta"] = present["meta"]
        if self.fusion is not None:
            out["joint"] = any_modality
        return out

    def _check_decidable(self, mask: torch.Tensor) -> None:
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise MissingModalityError(
                f"samples {rows[:10]} of the batch have none of the inputs the decision uses "
                f"({list(self.decision_branches)} from {list(self.modalities)}); "
                "every sample needs at least one present modality"
            )

    def check_presence(self, batch: dict[str, Any]) -> None:
        """Raise :class:`MissingModalityError` if a sample of ``batch`` has nothing to decide on.

        Cheap on CPU tensors: the trainer calls it on each batch before moving it to the GPU.
        """
        branch_present = self.branch_presence(self.presence(batch, dropout=False))
        self._check_decidable(torch.stack([branch_present[b] for b in self.decision_branches], dim=1))

    if TYPE_CHECKING:  # nn.Module.__call__ runs forward (with hooks); this gives it forward's types

        def __call__(self, batch: dict[str, Any]) -> FusionOutput: ...

    def forward(self, batch: dict[str, Any]) -> FusionOutput:
        """Run the model on a batch dict; see :class:`FusionOutput`."""
        present = self.presence(batch)
        branch_present = self.branch_presence(present)
        features: dict[str, torch.Tensor] = {}
        if self.image_stream is not None:
            features["image"] = self.image_stream(batch, present)
        if self.meta_stream is not None:
            features["meta"] = self.meta_stream(batch["meta"], present["meta"])
        if self.fusion is not None:
            features["joint"] = self.fusion(features["image"], features["meta"])
        logits = {b: head(features[b]).float() for b, head in self.heads.items()}

        mask = torch.stack([branch_present[b] for b in self.decision_branches], dim=1)
        if self.validate_presence:
            self._check_decidable(mask)
        log_w = self.decision(logits, mask).float()
        branch_log_probs = torch.stack([logits[b].log_softmax(dim=-1) for b in self.decision_branches], dim=1)
        log_probs = torch.logsumexp(log_w[:, :, None] + branch_log_probs, dim=1)
        weights = None
        if self.has_weights:
            weights = log_w.new_zeros(log_w.shape[0], len(BRANCHES))
            for i, b in enumerate(self.decision_branches):
                weights[:, BRANCHES.index(b)] = log_w[:, i].exp()
        return FusionOutput(
            probs=log_probs.exp().clamp(max=1.0),  # rounding in logsumexp can give 1 + 1e-7
            log_probs=log_probs,
            logits=logits,
            weights=weights,
            features=features,
            present=branch_present,
        )


def build_model(spec: ModelSpec | dict[str, Any], *, metadata_width: int | None = None) -> FusionModel:
    """Assemble the model a spec describes (:meth:`FusionModel.from_spec`).

    ``metadata_width`` is the width of the encoded metadata vector M
    (:attr:`fusionkit.data.MetadataEncoder.metadata_width`, 35 for MILK10k); it is needed when the
    model uses metadata.
    """
    return FusionModel.from_spec(spec, metadata_width=metadata_width)
