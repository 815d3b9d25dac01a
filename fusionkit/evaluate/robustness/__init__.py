"""Robustness per modality: seeded corruptions of one modality at a time, scored against severity.

* :data:`CORRUPTIONS` — every corruption by name (image ones for ``derm``/``clinical``, metadata
  ones for ``meta``, and ``"absent"``), with :class:`Perturbation`, the one object a predictor
  applies;
* :func:`robustness_table` — runs a predictor (``predict_fn(perturbation) -> posteriors``) under
  each and scores it with the ISIC metrics, a bootstrap interval of the macro Dice, the relative
  drop and, given a reference run's table, ImageNet-C's mCE;
* :class:`PerturbedDataset` — a dataset view that applies a perturbation to fusionkit items;
* :func:`write_robustness` — ``robustness.json``, ``robustness.md`` and ``robustness.png``;
* :func:`pipeline_robustness` / :func:`evaluate_robustness` — the same for a trained
  :class:`~fusionkit.inference.pipeline.FusionPipeline` on its validation split (``fusionkit
  evaluate RUN --robustness``).
"""

from fusionkit.evaluate.robustness.catalog import (
    ABSENT,
    CORRUPTIONS,
    IMAGE_MODALITIES,
    SEVERITIES,
    Corruption,
    Perturbation,
    corruption_rng,
    corruptions_for,
)
from fusionkit.evaluate.robustness.dataset import PerturbedDataset
from fusionkit.evaluate.robustness.output import (
    ROBUSTNESS_FILES,
    load_robustness,
    plot_robustness,
    robustness_markdown,
    write_robustness,
)
from fusionkit.evaluate.robustness.run import (
    evaluate_robustness,
    parse_corruptions,
    parse_severities,
    pipeline_robustness,
)
from fusionkit.evaluate.robustness.runner import (
    HEADLINE_METRICS,
    ModelFn,
    PredictFn,
    RobustnessTable,
    array_predictor,
    mean_corruption_error,
    robustness_table,
)

__all__ = [
    "ABSENT",
    "CORRUPTIONS",
    "HEADLINE_METRICS",
    "IMAGE_MODALITIES",
    "ROBUSTNESS_FILES",
    "SEVERITIES",
    "Corruption",
    "ModelFn",
    "PredictFn",
    "PerturbedDataset",
    "Perturbation",
    "RobustnessTable",
    "array_predictor",
    "corruption_rng",
    "corruptions_for",
    "evaluate_robustness",
    "load_robustness",
    "mean_corruption_error",
    "parse_corruptions",
    "parse_severities",
    "pipeline_robustness",
    "plot_robustness",
    "robustness_markdown",
    "robustness_table",
    "write_robustness",
]
