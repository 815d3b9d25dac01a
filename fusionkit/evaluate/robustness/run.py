"""Robustness of a trained model: :func:`pipeline_robustness` and :func:`evaluate_robustness`.

These bind :func:`~fusionkit.evaluate.robustness.runner.robustness_table`'s seam
(``predict_fn(perturbation) -> posteriors``) to a :class:`~fusionkit.inference.pipeline.FusionPipeline`:
the run's validation split (or any labelled split) is read as uint8 images, each perturbation is
applied by :class:`~fusionkit.evaluate.robustness.dataset.PerturbedDataset` before the model's own
normalisation, and ``"absent"`` masks the modality out through the presence masks, exactly as the
report's modality ablation does; a model left with no input at all (``"absent"`` of a
single-modality model's only modality) is scored as chance, uniform posteriors. By default only
the modalities the model takes are corrupted: corrupting an input the model never reads cannot
change its output (the tests check exactly that).

:func:`evaluate_robustness` is what ``fusionkit evaluate RUN --robustness`` runs: it writes
``robustness.json``, ``robustness.md`` and ``robustness.png`` into the run (or ``out``), with the
mean corruption error against a baseline run's ``robustness.json`` when one is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.evaluate.robustness.catalog import CORRUPTIONS, SEVERITIES, Perturbation, corruptions_for
from fusionkit.evaluate.robustness.dataset import PerturbedDataset
from fusionkit.evaluate.robustness.output import ROBUSTNESS_FILES, load_robustness, write_robustness
from fusionkit.evaluate.robustness.runner import RobustnessTable, robustness_table
from fusionkit.inference.pipeline import FusionPipeline

__all__ = ["evaluate_robustness", "parse_corruptions", "parse_severities", "pipeline_robustness"]

logger = logging.getLogger("fusionkit.evaluate")


def parse_severities(text: str) -> tuple[int, ...]:
    """``"1,3,5"`` -> ``(1, 3, 5)``; a value outside 1..5 or not an integer raises ConfigError."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--severities {text!r}: expected comma-separated integers in 1..5") from None
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise ConfigError(f"--severities {text!r}: expected comma-separated integers in 1..5")
    return values


def parse_corruptions(text: str | None) -> tuple[str, ...] | None:
    """``"hair,absent"`` -> ``("hair", "absent")`` (None: every corruption); an unknown name raises ConfigError."""
    if text is None:
        return None
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(
            f"--corruptions {text!r}: unknown {', '.join(unknown) or 'empty list'}; known: {', '.join(CORRUPTIONS)}"
        )
    return names


def pipeline_robustness(
    pipe: FusionPipeline,
    *,
    dataset: Any = None,
    modalities: Sequence[str] | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    n_boot: int = 1000,
    reference: RobustnessTable | None = None,
    progress: bool = False,
) -> RobustnessTable:
    """Score a trained model under every corruption of each of its modalities (module docstring).

    Args:
        pipe: the trained model.
        dataset: a labelled evaluation dataset with uint8 images (``pipe.dataset(...)``); default
            the run's validation split (``pipe.validation_dataset()``).
        modalities: which to corrupt (default: the model's own modalities).
        corruptions: names in :data:`~fusionkit.evaluate.robustness.catalog.CORRUPTIONS` (default all).
        severities: which of 1..5 to run.
        seed: corruption and bootstrap seed (two runs are comparable only with the same seed).
        n_boot: bootstrap resamples of the Dice intervals.
        reference: a baseline run's table, for the mCE.
        progress: log each perturbation as it runs.
    """
    data = pipe.validation_dataset() if dataset is None else dataset
    if not getattr(data, "labelled", True):
        raise FusionkitError("robustness needs a labelled split (ground truth)")
    chosen = tuple(pipe.modalities if modalities is None else modalities)
    if corruptions is not None:
        # keep the corruptions that apply to a corrupted modality (wrong_site means nothing to a
        # derm-only model), and the modalities some kept corruption applies to
        kept = [n for n in corruptions if any(corruptions_for(m, [n]) for m in chosen)]
        dropped = [n for n in corruptions if n not in kept]
        if not kept:
            raise ConfigError(
                f"corruption(s) {', '.join(corruptions)} apply to none of the modalities {', '.join(chosen)}"
            )
        if dropped:
            logger.info("robustness: %s apply to none of %s: left out", ", ".join(dropped), ", ".join(chosen))
        corruptions = kept
        chosen = tuple(m for m in chosen if corruptions_for(m, corruptions))
    clean = pipe.predict_dataset(data, desc="robustness: clean")

    def predict(perturbation: Perturbation | None) -> Any:
        if perturbation is None:
            return clean.probs
        if set(pipe.modalities) <= set(perturbation.absent):
            # nothing left to decide on (a single-modality model without it): chance, uniform posteriors
            k = len(pipe.class_names)
            return np.full((len(clean.lesion_ids), k), 1.0 / k)
        view = cast(Any, PerturbedDataset(data, perturbation))  # a Milk10kDataset view: same items, one corrupted
        preds = pipe.predict_dataset(view, absent=perturbation.absent, desc=f"robustness: {perturbation.label}")
        if list(preds.lesion_ids) != list(clean.lesion_ids):  # pragma: no cover - the loader keeps order
            raise FusionkitError("robustness: the perturbed predictions came back in another lesion order")
        return preds.probs

    try:
        return _table(predict, clean, pipe, chosen, corruptions, severities, seed, n_boot, reference, progress)
    except ValueError as exc:
        raise ConfigError(f"robustness: {exc}") from None


def _table(
    predict: Any,
    clean: Any,
    pipe: FusionPipeline,
    chosen: Sequence[str],
    corruptions: Sequence[str] | None,
    severities: Sequence[int],
    seed: int,
    n_boot: int,
    reference: RobustnessTable | None,
    progress: bool,
) -> RobustnessTable:
    return robustness_table(
        predict,
        clean.labels,
        pipe.class_names,
        modalities=chosen,
        corruptions=corruptions,
        severities=severities,
        seed=seed,
        n_boot=n_boot,
        reference=reference,
        progress=(lambda label: logger.info("robustness: %s", label)) if progress else None,
        clean_probs=clean.probs,
    )


def evaluate_robustness(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    baseline_run: str | Path | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    n_boot: int = 1000,
    checkpoint: str = "best",
    progress: bool = False,
) -> dict[str, Path]:
    """Score a run's robustness on its validation split and write the three files into the run (or ``out``).

    ``baseline_run``: a run directory holding ``robustness.json`` (or the file itself), scored with
    the same seed on the same lesions; the table then carries the mCE against it.
    Returns ``{"json"|"markdown"|"figure": path}``.
    """
    reference = None
    if baseline_run is not None:
        base = Path(baseline_run)
        reference = load_robustness(base / ROBUSTNESS_FILES["json"] if base.is_dir() else base)
    pipe = FusionPipeline.from_run(run_dir, checkpoint=checkpoint)
    table = pipeline_robustness(
        pipe,
        corruptions=corruptions,
        severities=severities,
        seed=seed,
        n_boot=n_boot,
        reference=reference,
        progress=progress,
    )
    target = Path(run_dir) if out is None else Path(out)
    target.mkdir(parents=True, exist_ok=True)
    return write_robustness(table, target)
