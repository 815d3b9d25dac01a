"""Using a trained model: loading it, predicting, TTA, ensembles, decision rules, submissions, ONNX.

The one object is :class:`~fusionkit.inference.pipeline.FusionPipeline`::

    from fusionkit import FusionPipeline

    pipe = FusionPipeline.from_run("runs/quickstart")          # or .from_pretrained(folder_or_hub_id)
    result = pipe.predict(derm="derm.jpg", clinical="clinical.jpg", metadata=rows)
    result.probs, result.classes, result.weights, result.missing
    pipe.save("my-model")                                       # config.json, model.safetensors, README.md, ...

One prediction passes through :mod:`~fusionkit.inference.pipeline`,
:mod:`~fusionkit.inference.inputs`, :mod:`~fusionkit.inference.predict`,
:mod:`~fusionkit.inference.tta` and :mod:`~fusionkit.inference.decision` (plus
:mod:`~fusionkit.inference.hub` when loaded from a folder, and :mod:`~fusionkit.inference.ensemble`
and :mod:`~fusionkit.inference.submission` for ``fusionkit predict``'s CSV). The layer sits above
``runtime`` (it reads run directories) and below ``train`` (the trainer validates with its
prediction loop and stores the decision rule at the end of training).
"""

from fusionkit.data import ImagePreprocessing
from fusionkit.inference.decision import DecisionRecord
from fusionkit.inference.pipeline import FusionPipeline, LesionPrediction, load_run
from fusionkit.inference.predict import Predictions

__all__ = ["DecisionRecord", "FusionPipeline", "ImagePreprocessing", "LesionPrediction", "Predictions", "load_run"]
