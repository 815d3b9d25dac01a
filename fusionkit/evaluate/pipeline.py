"""Train, then evaluate: what ``fusionkit train`` runs, composed here so training never imports evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

from fusionkit.evaluate.report import evaluate_run
from fusionkit.runtime.config import RunConfig
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
    :class:`~fusionkit.train.options.RunOptions`) and write its report into ``run_dir``.

    The report evaluates the best checkpoint on the run's held-out test part (``data.test_fraction``),
    or on its validation split when it has none (:func:`fusionkit.evaluate.report.evaluate_run`);
    returns the trainer.
    """
    progress = options.get("progress", True)
    return train_run(
        config,
        run_dir=run_dir,
        after_fit=lambda path: evaluate_run(path, gradcam_lesions=gradcam_lesions, progress=progress),
        **options,
    )
