"""The assembled fusion model: encoders -> fusion -> branch heads -> decision (Section 2.1).

``FusionModel`` is built from a :class:`~fusionkit.specs.ModelSpec` by :func:`build_model`. Its
forward takes the batch dict (``derm``, ``clinical``: (B, 3, H, W); ``meta``: (B, F); optional
``present``: a dict of (B,) bool masks per modality) and returns a :class:`FusionOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fusionkit.errors import ConfigError, MissingModalityError
from fusionkit.registry import registry
from fusionkit.specs.model import BRANCHES, ModelSpec


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


class ImageStream(nn.Module):
    """M_I of eq 1: one backbone per image (or one shared), missing images as learned embeddings.

    ``f_I`` is the concatenation (``combine="concat"``) or mean of the per-image features.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        enc_spec = spec.image_encoder
        entry = registry("image_encoder").get(enc_spec.kind)
        self.modalities = spec.image_modalities
        self.shared = enc_spec.shared and len(self.modalities) > 1
        self.combine = enc_spec.combine
        if self.shared:
            encoders = {"shared": entry.component(**enc_spec.component_kwargs())}
        else:
            encoders = {m: entry.component(**enc_spec.component_kwargs()) for m in self.modalities}
        self.encoders = nn.ModuleDict(encoders)
        width: int = next(iter(encoders.values())).out_dim
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(width)) for m in self.modalities})
        self.width = width
        multiplier = len(self.modalities) if self.combine == "concat" else 1
        self.out_dim = width * multiplier

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

    def __init__(self, spec: ModelSpec, metadata_width: int) -> None:
        super().__init__()
        enc_spec = spec.metadata_encoder
        component = registry("metadata_encoder").get(enc_spec.kind).component
        self.encoder = component(in_dim=metadata_width, **enc_spec.component_kwargs())
        self.out_dim: int = self.encoder.out_dim
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


class FusionModel(nn.Module):
    """A multimodal classifier assembled from a :class:`ModelSpec` (see :func:`build_model`).

    ``metadata_width`` is the width of the encoded metadata vector M (its encoder's input); the
    feature widths D_I, D_M, D_IM of eqs 1-2 are ``feature_dims["image"|"meta"|"joint"]``.
    """

    def __init__(self, spec: ModelSpec, *, metadata_width: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes
        self.modalities = spec.modalities
        widths: dict[str, int] = {}
        self.image_stream = ImageStream(spec) if spec.image_modalities else None
        if self.image_stream is not None:
            widths["image"] = self.image_stream.out_dim
        self.meta_stream = None
        if spec.uses_meta:
            if metadata_width is None:
                raise ConfigError(
                    "the metadata encoder's input width is unknown: pass metadata_width= to "
                    "build_model (the width of the encoded metadata, "
                    "fusionkit.data.MetadataEncoder.width)"
                )
            self.meta_stream = MetaStream(spec, metadata_width)
            widths["meta"] = self.meta_stream.out_dim
        self.metadata_width = metadata_width
        """Width of the encoded metadata vector M (None without metadata)."""
        self.fusion = None
        if spec.fusion is not None:
            entry = registry("fusion").get(spec.fusion.kind)
            self.fusion = entry.component(
                image_dim=widths["image"], meta_dim=widths["meta"], **spec.fusion.component_kwargs()
            )
            widths["joint"] = self.fusion.out_dim
        self.heads = nn.ModuleDict(
            {
                b: ClassifierHead(in_dim=widths[b], num_classes=spec.num_classes, dropout=spec.heads.dropout)
                for b in spec.head_branches
            }
        )
        self.decision_branches = spec.decision_branches
        self.decision = (
            registry("decision")
            .get(spec.decision.kind)
            .component(
                num_classes=spec.num_classes,
                branches=self.decision_branches,
                **spec.decision.component_kwargs(),
            )
        )
        self.has_weights = type(spec.decision).has_weights
        self.feature_dims = widths
        self.validate_presence = True
        """Check that every sample has a branch to decide on (a host sync; the trainer turns it off
        after checking the masks on the CPU, so CUDA steps stay asynchronous and graph-capturable)."""

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
        if dropout and self.training and self.spec.modality_dropout.p > 0:
            present = self._drop_modalities(present)
        return present

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stacked = torch.stack([present[m] for m in self.modalities], dim=1)
        keep = torch.rand(stacked.shape, device=stacked.device) >= self.spec.modality_dropout.p
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
        images = [present[m] for m in self.spec.image_modalities]
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
    """Assemble the model a spec describes.

    ``metadata_width`` is the width of the encoded metadata vector M
    (:attr:`fusionkit.data.MetadataEncoder.width`, 35 for MILK10k); it is needed when the model uses
    metadata. (fusionkit 0.1.0 called it ``meta_dim``, the name the fusion blocks give D_M.)
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.model_validate(spec)
    return FusionModel(spec, metadata_width=metadata_width)
