"""Train, then evaluate: what ``fusionkit train`` runs, composed here so training never imports evaluation."""

from __future__ import annotations

from pathlib import Path

from fusionkit.evaluate.report import evaluate_run
from fusionkit.runtime.config import RunConfig
from fusionkit.train.trainer import Trainer, train_run


def train_and_evaluate(
    config: RunConfig,
    *,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    synthetic: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    gradcam_lesions: int = 4,
) -> Trainer:
    """Train a run (:func:`fusionkit.train.trainer.train_run`) and write its report into ``run_dir``.

    The report evaluates the best checkpoint on the run's held-out test part (``data.test_fraction``),
    or on its validation split when it has none (:func:`fusionkit.evaluate.report.evaluate_run`);
    returns the trainer.
    """
    return train_run(
        config,
        run_dir=run_dir,
        data_root=data_root,
        synthetic=synthetic,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        after_fit=lambda path: evaluate_run(path, gradcam_lesions=gradcam_lesions, progress=progress),
    )
