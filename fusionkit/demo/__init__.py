"""The demo page (``fusionkit demo``): a trained model in the browser, on Gradio (the ``demo`` extra).

:func:`build_demo` builds the page for a :class:`~fusionkit.inference.pipeline.FusionPipeline`;
:func:`serve` serves it. :mod:`fusionkit.demo.lesion` holds what the page does with one lesion and
needs no Gradio.
"""

from fusionkit.demo.app import build_demo, example_cases, serve
from fusionkit.demo.lesion import CaseResult, form_fields, metadata_record, predict_case

__all__ = ["CaseResult", "build_demo", "example_cases", "form_fields", "metadata_record", "predict_case", "serve"]
