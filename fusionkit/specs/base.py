"""Base classes of every spec: frozen pydantic models that forbid unknown keys.

A component's spec is a subclass of one of the four slot bases below with a ``kind: Literal[...]``
field. Its other fields are the component constructor's keyword arguments; the widths that only the
assembled model knows (the input widths, the number of classes) are passed by the builder and are
never stored in a spec.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class FrozenSpec(BaseModel):
    """A frozen pydantic model with ``extra="forbid"``: a typo'd key is an error naming its path.

    Floats must be finite (``allow_inf_nan=False``): ``lr: .inf`` or ``nan`` is refused by name.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", protected_namespaces=(), use_attribute_docstrings=True,
        allow_inf_nan=False,
    )


class ComponentSpec(FrozenSpec):
    """The spec of one registered component; ``kind`` names it in its registry."""

    kind: str
    slot_fields: ClassVar[frozenset[str]] = frozenset({"kind"})
    """Fields that configure how the model uses the slot rather than the component's constructor."""

    def component_kwargs(self) -> dict[str, Any]:
        """The keyword arguments this spec passes to its component's constructor."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in self.slot_fields
        }


class ImageEncoderSpec(ComponentSpec):
    """Base of image-encoder specs. The component maps one image batch (B, 3, H, W) to (B, out_dim).

    Constructor context passed by the builder: none. How the dermoscopic and clinical features are
    formed is configured here, for every image encoder kind alike:

    - ``shared``: one backbone for both images (True) or one backbone per image (False, the paper).
    - ``combine``: how the two image features form ``f_I`` of eq 1: ``concat`` (D_I = 2 x width, the
      default) or ``mean`` (D_I = width).
    """

    slot_fields: ClassVar[frozenset[str]] = frozenset({"kind", "shared", "combine"})
    shared: bool = False
    """One backbone for both images (True) or one per image (False, the paper)."""
    combine: str = "concat"
    """How the two image features form f_I: concat (D_I = 2 x width) or mean."""


class MetadataEncoderSpec(ComponentSpec):
    """Base of metadata-encoder specs: (B, in_dim) -> (B, out_dim) = D_M.

    ``in_dim`` is the width of the encoded metadata vector. It is derived from the data (the fitted
    :class:`fusionkit.data.MetadataEncoder`) and filled in by the trainer, or passed to
    :func:`fusionkit.build_model` as ``meta_dim``; never typed by hand.
    """

    in_dim: int | None = None
    """Width of the encoded metadata vector; filled from the data, never typed by hand."""


class FusionSpec(ComponentSpec):
    """Base of fusion-block specs (eq 2): ``forward(f_image, f_meta) -> (B, out_dim)`` = D_IM.

    Constructor context passed by the builder: ``image_dim`` (D_I) and ``meta_dim`` (D_M).
    """


class DecisionSpec(ComponentSpec):
    """Base of decision-head specs: how the branch posteriors form the final posterior.

    Constructor context: ``num_classes`` and ``branches`` (the branch names the decision combines, in
    the paper's order ``image``, ``joint``, ``meta``). ``forward(logits, present)`` returns the log
    fusion weights (B, len(branches)); the model forms ``log P_final = logsumexp_k(log w_k +
    log_softmax(z_k))``.
    """

    has_weights: ClassVar[bool] = True
    """Whether the decision has fusion weights worth reporting (``single`` has none)."""

    def decision_branches(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """The branches this decision combines, given those the model has."""
        return available


def _bind_registry_bases() -> None:
    """Make each registry accept only specs of its slot (a fusion spec must be a FusionSpec, ...)."""
    from fusionkit.registry import REGISTRIES

    for kind, base in (
        ("image_encoder", ImageEncoderSpec),
        ("metadata_encoder", MetadataEncoderSpec),
        ("fusion", FusionSpec),
        ("decision", DecisionSpec),
    ):
        REGISTRIES[kind].spec_base = base


_bind_registry_bases()
