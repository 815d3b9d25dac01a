"""Which lesions a run's report is computed on, and where it goes.

A run's numbers are honest only on lesions that chose nothing: the validation split selects the
checkpoint and fits the thresholds, so the report's headline is on the held-out test part when the
run has one (``data.test_fraction``). Lesions the model trained on are refused unless asked for, and
such an in-sample report never replaces the run's own report (issue 28 item 6, issue 29 item 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fusionkit.data import Milk10kDataset
from fusionkit.errors import ConfigError
from fusionkit.inference.pipeline import FusionPipeline
from fusionkit.runtime.rundir import RunDir

Scope = Literal["test", "validation", "folder", "in-sample"]
IN_SAMPLE_LABEL = "in-sample (training lesions)"
"""How a report on lesions the model trained on is labelled."""
IN_SAMPLE_DIR = "in-sample"
"""Where an in-sample report goes inside the run directory when no ``out`` is given."""


@dataclass(frozen=True)
class EvaluationScope:
    """What :func:`fusionkit.evaluate.report.evaluate_run` evaluates.

    Attributes:
        scope: ``test`` (the run's held-out test part), ``validation`` (its selection split: no test
            part), ``folder`` (another labelled folder, no training lesion) or ``in-sample`` (a folder
            holding lesions the model trained on, asked for with ``allow_training_lesions``).
        dataset: the lesions evaluated.
        out_dir: where the report is written.
        training_lesions: how many of them are in the run's training split.
    """

    scope: Scope
    dataset: Milk10kDataset
    out_dir: Path
    training_lesions: int = 0

    @property
    def on_validation(self) -> bool:
        """Whether the evaluated lesions are the run's validation split itself."""
        return self.scope == "validation"

    def headline(self, data_root: str | Path | None) -> str:
        """The report's sentence on what the numbers are computed on."""
        n = len(self.dataset)
        if self.scope == "test":
            return (
                f"evaluated on its held-out **test part** ({n} lesions that no checkpoint selection, threshold "
                "fitting, early stopping or learning-rate plateau saw)"
            )
        if self.scope == "validation":
            return (
                f"evaluated on its **validation split** ({n} lesions), the split that selected this checkpoint "
                "and fitted its thresholds, so the numbers are optimistic; set `data.test_fraction` for a held-out "
                "test part"
            )
        if self.scope == "in-sample":
            return (
                f"evaluated **{IN_SAMPLE_LABEL}** on `{data_root}` ({n} lesions, {self.training_lesions} of them "
                "in the run's training split): how well the model fits what it trained on, not how it generalises"
            )
        return f"evaluated on `{data_root}` ({n} lesions, none of them training lesions of the run)"

    def record(self) -> dict[str, Any]:
        """``evaluated.json``: the scope, the lesion count and the training lesions among them."""
        return {
            "split": self.scope,
            "label": IN_SAMPLE_LABEL if self.scope == "in-sample" else self.scope,
            "lesions": len(self.dataset),
            "training_lesions": self.training_lesions,
        }


def evaluation_scope(
    run: FusionPipeline,
    *,
    run_dir: Path,
    data_root: str | Path | None,
    out: str | Path | None,
    allow_training_lesions: bool,
) -> EvaluationScope:
    """Decide what is evaluated and where the report goes.

    Without ``data_root``: the run's test part when it has one, else its validation split, into
    ``out`` or the run directory. With it: the labelled Training split of that folder; when it holds
    lesions the run trained on (its ``split.json`` lists them under ``"train"``) this raises unless
    ``allow_training_lesions``, and the in-sample report then goes to ``out`` or ``RUN/in-sample/``,
    never over the run's own report.

    Raises:
        ConfigError: the folder holds training lesions and ``allow_training_lesions`` is false (one
            line naming how many and the split file).
    """
    if data_root is None:
        test = run.split.get("test") or []
        dataset = run.test_dataset() if test else run.validation_dataset()
        return EvaluationScope(
            scope="test" if test else "validation", dataset=dataset, out_dir=Path(out) if out else run_dir
        )
    dataset = run.dataset(data_root=data_root)
    trained = set(run.split.get("train", []))
    seen = [x for x in dataset.lesion_ids if x in trained]
    if not seen:
        return EvaluationScope(scope="folder", dataset=dataset, out_dir=Path(out) if out else run_dir)
    if not allow_training_lesions:
        raise ConfigError(
            f"{data_root}: {len(seen)} of its {len(dataset)} lesions (e.g. {seen[0]}) are training lesions of the "
            f'run ({RunDir(run_dir).split} lists them under "train"); pass --allow-training-lesions for a report '
            f"labelled {IN_SAMPLE_LABEL}, written apart from the run's own report"
        )
    out_dir = Path(out) if out else run_dir / IN_SAMPLE_DIR
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError(f"{out_dir}: an in-sample report never replaces the run's own report; pick another --out")
    return EvaluationScope(scope="in-sample", dataset=dataset, out_dir=out_dir, training_lesions=len(seen))
