"""Train, then store the decision rule and evaluate: what ``fusionkit train`` runs, composed here so
training imports neither inference nor evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from fusionkit.evaluate.report import evaluate_run
from fusionkit.inference.pipeline import store_run_decision
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.device import resolve_device
from fusionkit.train.options import RunOptions
from fusionkit.train.trainer import Trainer, train_run


def train_and_evaluate(
    config: RunConfig,
    *,
    run_dir: str | Path,
    gradcam_lesions: int = 4,
    **options: Unpack[RunOptions],
) -> Trainer:
    """Train a run (:func:`fusionkit.train.trainer.train_run`; ``options`` are its
    :class:`~fusionkit.train.options.RunOptions`), store its decision rule and write its report into ``run_dir``.

    Once training ends, the decision rule is fitted on the validation split with the best checkpoint
    and stored with the model (``inference.json``: :func:`fusionkit.inference.pipeline.store_run_decision`;
    predicting then never reads the training data).

    The report evaluates the best checkpoint on the run's held-out test part (``data.test_fraction``),
    or on its validation split when it has none (:func:`fusionkit.evaluate.report.evaluate_run`);
    returns the trainer.
    """
    progress = options.get("progress", True)

    def after_fit(path: Path) -> None:
        store_run_decision(path, device=resolve_device(config.train.device))
        evaluate_run(path, gradcam_lesions=gradcam_lesions, progress=progress)

    return train_run(config, run_dir=run_dir, after_fit=after_fit, **options)
