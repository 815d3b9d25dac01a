"""Pydantic specs: frozen, ``extra="forbid"``, each component slot a union discriminated by ``kind``."""

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
    AttentionOnlySpec,
    AverageDecisionSpec,
    ConcatFusionSpec,
    MLPMetadataEncoderSpec,
    MMFASpec,
    SingleDecisionSpec,
    SkipOnlySpec,
    TimmImageEncoderSpec,
)
from fusionkit.specs.io import dump_spec
from fusionkit.specs.model import (
    BRANCHES,
    IMAGE_MODALITIES,
    MODALITIES,
    HeadSpec,
    LossSpec,
    ModalityDropoutSpec,
    ModelSpec,
    spec_json_schema,
)

__all__ = [
    "ADFDecisionSpec",
    "AttentionOnlySpec",
    "AverageDecisionSpec",
    "BRANCHES",
    "ComponentSpec",
    "ConcatFusionSpec",
    "DecisionSpec",
    "FrozenSpec",
    "FusionSpec",
    "HeadSpec",
    "IMAGE_MODALITIES",
    "ImageEncoderSpec",
    "LossSpec",
    "MLPMetadataEncoderSpec",
    "MMFASpec",
    "MODALITIES",
    "MetadataEncoderSpec",
    "ModalityDropoutSpec",
    "ModelSpec",
    "SingleDecisionSpec",
    "SkipOnlySpec",
    "TimmImageEncoderSpec",
    "dump_spec",
    "spec_json_schema",
]
