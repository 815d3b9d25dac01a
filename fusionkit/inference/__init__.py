"""Using a trained model: loading it, predicting, TTA, ensembles, decision rules, submissions, ONNX.

The one object is :class:`~fusionkit.inference.pipeline.FusionPipeline`::

    from fusionkit import FusionPipeline

    pipe = FusionPipeline.from_run("runs/quickstart")          # or .from_pretrained(folder_or_hub_id)
    result = pipe.predict(derm="derm.jpg", clinical="clinical.jpg", metadata=rows)
    result.probs, result.classes, result.weights, result.missing
    pipe.save("my-model")                                       # config.json, model.safetensors, README.md, ...

One prediction passes through :mod:`~fusionkit.inference.pipeline`,
:mod:`~fusionkit.inference.inputs`, :mod:`fusionkit.runtime.predict`,
:mod:`fusionkit.runtime.tta` and :mod:`~fusionkit.inference.decision` (plus
:mod:`~fusionkit.inference.hub` when loaded from a folder, and :mod:`~fusionkit.inference.ensemble`
and :mod:`~fusionkit.inference.submission` for ``fusionkit predict``'s CSV). The layer sits above
``runtime`` (it reads run directories) beside ``train``: neither imports the other;
:func:`fusionkit.evaluate.train_and_evaluate` stores the decision rule once training ends
(:func:`~fusionkit.inference.pipeline.store_run_decision`).
"""

from fusionkit.data import ImagePreprocessing
from fusionkit.inference.decision import DecisionRecord
from fusionkit.inference.pipeline import FusionPipeline, LesionPrediction, load_run
from fusionkit.runtime.predict import Predictions

__all__ = ["DecisionRecord", "FusionPipeline", "ImagePreprocessing", "LesionPrediction", "Predictions", "load_run"]
