"""Base classes of every spec: frozen pydantic models that forbid unknown keys.

A component's spec is a subclass of one of the four slot bases below with a ``kind: Literal[...]``
field. Its other fields are the component constructor's keyword arguments; the widths that only the
assembled model knows (the input widths, the number of classes) are passed by the builder and are
never stored in a spec.

Image encoders also declare their input preprocessing: :class:`fusionkit.components.contract.ImageEncoder`
is the contract (``out_dim`` and a ``preprocessing`` property), and
:func:`~fusionkit.components.contract.declared_preprocessing` is the check the model applies to every
image encoder it is built with, registered or not. They live apart so that this module needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator


class FrozenSpec(BaseModel):
    """A frozen pydantic model with ``extra="forbid"``: a typo'd key is an error naming its path.

    Floats must be finite (``allow_inf_nan=False``): ``lr: .inf`` or ``nan`` is refused by name; a
    path field refuses ``""``.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        protected_namespaces=(),
        use_attribute_docstrings=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_empty_paths(cls, data: Any) -> Any:
        """Refuse ``""`` for a path field: pydantic reads it as ``.``, the current folder, silently."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if data.get(name) == "" and Path in (get_args(field.annotation) or (field.annotation,)):
                    raise ValueError(f"{name} is an empty path (it would mean the current folder); give a path or null")
        return data


class ComponentSpec(FrozenSpec):
    """The spec of one registered component; ``kind`` names it in its registry."""

    kind: str
    slot_fields: ClassVar[frozenset[str]] = frozenset({"kind"})
    """Fields that configure how the model uses the slot rather than the component's constructor."""

    def component_kwargs(self) -> dict[str, Any]:
        """The keyword arguments this spec passes to its component's constructor."""
        return {name: getattr(self, name) for name in type(self).model_fields if name not in self.slot_fields}


class ImageEncoderSpec(ComponentSpec):
    """Base of image-encoder specs. The component maps one image batch (B, 3, H, W) to (B, out_dim)
    and declares the preprocessing its input needs (the :class:`ImageEncoder` contract: a
    ``preprocessing`` property, required of every image encoder, plugins included).

    Constructor context passed by the builder: none. How the dermoscopic and clinical features are
    formed is configured here, for every image encoder kind alike:

    - ``shared``: one backbone for both images (True) or one backbone per image (False, the paper).
    - ``combine``: how the two image features form ``f_I`` of eq 1: ``concat`` (D_I = 2 x width, the
      default) or ``mean`` (D_I = width).
    """

    slot_fields: ClassVar[frozenset[str]] = frozenset({"kind", "shared", "combine"})
    shared: bool = False
    """One backbone for both images (True) or one per image (False, the paper)."""
    combine: Literal["concat", "mean"] = "concat"
    """How the two image features form f_I: concat (D_I = 2 x width) or mean."""

    @property
    def display_name(self) -> str:
        """How reports name this encoder: its ``kind``; a kind built around a named model returns
        that name instead (the ``timm`` kind: its ``model_name``)."""
        return self.kind


class MetadataEncoderSpec(ComponentSpec):
    """Base of metadata-encoder specs (M_M of eq 1): (B, metadata_width) -> (B, out_dim) = D_M.

    Constructor context passed by the builder: ``metadata_width``, the width of the encoded metadata
    vector M. It comes from the data alone (:attr:`fusionkit.data.MetadataEncoder.metadata_width`,
    passed to :func:`fusionkit.build_model` as ``metadata_width``), so no spec stores it.
    """


class FusionSpec(ComponentSpec):
    """Base of fusion-block specs (eq 2): ``forward(f_image, f_meta) -> (B, out_dim)`` = D_IM.

    Constructor context passed by the builder: ``image_dim`` (D_I, the width of f_I) and
    ``meta_dim`` (D_M, the width of f_M, the metadata encoder's ``out_dim``). A fusion block
    takes both feature groups and yields the joint branch, so it needs an image and ``meta``.
    """


class DecisionSpec(ComponentSpec):
    """Base of decision-head specs: how the branch posteriors form the final posterior.

    Constructor context: ``num_classes`` and ``branches`` (the branch names the decision combines, in
    the paper's order ``image``, ``joint``, ``meta``). ``forward(logits, present)`` returns the log
    fusion weights (B, len(branches)); the model forms ``log P_final = logsumexp_k(log w_k +
    log_softmax(z_k))``.

    A decision declares what it needs, and :class:`fusionkit.ModelSpec` checks the declarations of
    every kind alike, built-in or plugin: :meth:`decision_branches` (the branches it combines, given
    those the model has), ``required_branches`` (branches the model must have), ``min_branches``
    (the fewest branches it can combine) and ``requirement`` (why, for the error message).
    """

    has_weights: ClassVar[bool] = True
    """Whether the decision has fusion weights worth reporting (``single`` has none)."""
    required_branches: ClassVar[tuple[str, ...]] = ()
    """Branches the model must have for this decision (``adf``: all three)."""
    min_branches: ClassVar[int] = 1
    """The fewest branches this decision can combine (``average``: two)."""
    requirement: ClassVar[str] = ""
    """Why it needs them: a phrase completing "the 'kind' decision ..." in an error message."""

    def decision_branches(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """The branches this decision combines, given those the model has."""
        return available
