"""fusionkit: multimodal fusion components for skin-lesion classification (the JI-ADF paper).

Compose a model from a spec::

    import fusionkit as fk

    spec = fk.load_preset("ji-adf", {"image_encoder": {"model_name": "test_efficientnet",
                                                        "pretrained": False}})
    model = fk.build_model(spec, metadata_width=35)
    out = model({"derm": derm, "clinical": clinical, "meta": meta})
    out.probs, out.logits["joint"], out.weights

``import fusionkit`` is light: the errors and the registry functions (standard library only) are
imported here, every other public name from its module when first used (PEP 562, as transformers
does), so ``fusionkit.__version__`` or the command line's help needs no torch, and the component
plugins load when the registries are first asked, not here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fusionkit import registry  # the module; it is callable: ``fusionkit.registry(kind)`` is its get_registry
from fusionkit.errors import (
    ConfigError,
    DataError,
    FusionkitError,
    MissingModalityError,
    PretrainedWeightsError,
)
from fusionkit.registry import (
    COMPONENT_KINDS,
    PluginWarning,
    list_components,
    load_plugins,
    register,
)

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "FusionModel": "fusionkit.model",
    "FusionOutput": "fusionkit.model",
    "FusionPipeline": "fusionkit.inference.pipeline",
    "JointIndividualLoss": "fusionkit.losses",
    "LossBreakdown": "fusionkit.losses",
    "ModelSpec": "fusionkit.specs",
    "build_model": "fusionkit.model",
    "dump_spec": "fusionkit.specs",
    "list_presets": "fusionkit.presets",
    "load_preset": "fusionkit.presets",
    "load_spec": "fusionkit.presets",
    "spec_json_schema": "fusionkit.specs",
}
"""The lazy public names and the module each is imported from on first use (``specs`` is the subpackage)."""

__all__ = [
    "COMPONENT_KINDS",
    "ConfigError",
    "DataError",
    "FusionModel",
    "FusionPipeline",
    "FusionOutput",
    "FusionkitError",
    "JointIndividualLoss",
    "LossBreakdown",
    "MissingModalityError",
    "ModelSpec",
    "PluginWarning",
    "PretrainedWeightsError",
    "build_model",
    "dump_spec",
    "list_components",
    "list_presets",
    "load_plugins",
    "load_preset",
    "load_spec",
    "register",
    "registry",
    "specs",
    "spec_json_schema",
]

if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports the lazy names stand for
    from fusionkit import specs
    from fusionkit.inference.pipeline import FusionPipeline
    from fusionkit.losses import JointIndividualLoss, LossBreakdown
    from fusionkit.model import FusionModel, FusionOutput, build_model
    from fusionkit.presets import list_presets, load_preset, load_spec
    from fusionkit.specs import ModelSpec, dump_spec, spec_json_schema


def __getattr__(name: str) -> Any:
    """Import a public name (or the ``specs`` subpackage) from its module on first use (PEP 562)."""
    if name == "specs":
        value: Any = importlib.import_module("fusionkit.specs")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'fusionkit' has no attribute {name!r}")
    globals()[name] = value  # later uses are plain attribute reads
    return value


def __dir__() -> list[str]:
    """The public names and the module's own attributes (what ``dir(fusionkit)`` lists)."""
    return sorted({*globals(), *__all__})
