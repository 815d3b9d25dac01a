"""Export a trained pipeline to ONNX, with a JSON sidecar that holds everything inference needs besides.

The graph takes one tensor per modality (``derm``, ``clinical``: (B, 3, S, S) normalised float32;
``meta``: (B, F) encoded metadata) and one bool presence mask per modality (``present_derm``, ...:
(B,)), batch dynamic. It returns ``probs`` (the final posterior P_final of eq 6), ``weights`` (the
fusion weights alpha of eq 5, for decisions that have them) and ``logits_<branch>`` (each branch's
z_k of eq 3). The sidecar ``<out>.json`` holds the class names, the image preprocessing (size,
interpolation, mean, std), the fitted metadata encoder and the vocabularies it encodes, and the
decision rule with its stored thresholds, so ``examples/onnx_inference.py`` predicts from raw CSV
values with numpy, Pillow and onnxruntime only.
The sidecar is removed before the ``.onnx`` file is replaced and written last, holding that
file's SHA-256 (:mod:`fusionkit.inference.outputs`): a kill never leaves a sidecar describing another
model, and a second export to the same ``out`` at once is refused.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionkit.data.schema import MONET_COLUMNS, SEXES, SITES, SKIN_TONES
from fusionkit.errors import ConfigError
from fusionkit.inference.outputs import writing_output
from fusionkit.inference.pipeline import FusionPipeline
from fusionkit.model import FusionModel
from fusionkit.utils.faults import fault_point
from fusionkit.utils.io import PARTIAL_SUFFIX

EXPORT_FORMATS = ("onnx",)
"""The formats ``fusionkit export`` writes."""

ONNX_OPSET = 17
"""The ONNX opset of exported graphs (onnxruntime >= 1.11 runs it)."""


class ExportWrapper(nn.Module):
    """A :class:`FusionModel` with positional tensor inputs and a tuple of named outputs (for tracing)."""

    def __init__(self, model: FusionModel) -> None:
        super().__init__()
        self.model = model
        self.modalities = tuple(model.modalities)
        self.branches = tuple(model.heads)
        self.input_names = [*self.modalities, *(f"present_{m}" for m in self.modalities)]
        self.output_names = [
            "probs",
            *(["weights"] if model.has_weights else []),
            *(f"logits_{b}" for b in self.branches),
        ]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs named by ``output_names`` for the inputs named by ``input_names``."""
        k = len(self.modalities)
        batch: dict[str, Any] = dict(zip(self.modalities, inputs[:k], strict=True))
        batch["present"] = dict(zip(self.modalities, inputs[k:], strict=True))
        out = self.model(batch)
        extra = (out.weights,) if self.model.has_weights else ()
        return (out.probs, *extra, *(out.logits[b] for b in self.branches))


def example_inputs(model: FusionModel, batch_size: int = 2, *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs in the exported graph's order (all modalities present)."""
    g = torch.Generator().manual_seed(seed)
    size = model.image_size or 1
    tensors = []
    for m in model.modalities:
        shape = (batch_size, model.metadata_width or 0) if m == "meta" else (batch_size, 3, size, size)
        tensors.append(torch.randn(shape, generator=g))
    tensors += [torch.ones(batch_size, dtype=torch.bool) for _ in model.modalities]
    return tuple(tensors)


def sidecar(pipe: FusionPipeline, wrapper: ExportWrapper) -> dict[str, Any]:
    """The JSON that travels beside the ONNX file (see the module docstring)."""
    return {
        "format": "fusionkit.onnx_sidecar",
        "version": 1,
        "inputs": wrapper.input_names,
        "outputs": wrapper.output_names,
        "class_names": list(pipe.class_names),
        "image": pipe.preprocessing.to_dict(),
        "metadata_encoder": pipe.encoder.to_dict() if pipe.encoder is not None else None,
        "vocabularies": {
            "sex": list(SEXES),
            "site": list(SITES),
            "skin_tone": list(SKIN_TONES),
            "monet": list(MONET_COLUMNS),
        },
        "decision": pipe.decision.to_dict(),
    }


def export_onnx(pipe: FusionPipeline | str | Path, *, out: str | Path, checkpoint: str = "best") -> Path:
    """Export a pipeline (or a run directory's ``checkpoint``) to ONNX at ``out`` and its sidecar
    to ``out`` with suffix ``.json``."""
    if not isinstance(pipe, FusionPipeline):
        pipe = FusionPipeline.from_run(pipe, checkpoint=checkpoint, device="cpu")
    model = copy.deepcopy(pipe.model).cpu().float().eval()
    model.validate_presence = False  # a data-dependent check: not part of the graph
    wrapper = ExportWrapper(model).eval()
    out = Path(out)
    dynamic = {name: {0: "batch"} for name in [*wrapper.input_names, *wrapper.output_names]}
    with writing_output(out) as pair:  # one writer; the sidecar, removed first, is written last
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=PARTIAL_SUFFIX)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                # the legacy exporter's deprecation notice, and the tracer noting that the presence
                # masks pass through torch.as_tensor (an identity on tensors: they stay graph inputs)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(
                    wrapper,
                    example_inputs(model),
                    tmp,
                    input_names=wrapper.input_names,
                    output_names=wrapper.output_names,
                    dynamic_axes=dynamic,
                    opset_version=ONNX_OPSET,
                    dynamo=False,
                )
            pair.begin()
            fault_point("write.before-rename:" + out.name)
            os.replace(tmp, out)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"ONNX export needs the 'onnx' package ({exc}); install the export extra: pip install '.[export]' in the fusionkit checkout, or pip install onnx"
            ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        pair.commit(sidecar(pipe, wrapper), files=[out])
    return out
