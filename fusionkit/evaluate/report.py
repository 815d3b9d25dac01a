"""``evaluate_run``: the evaluation report of a trained run, written into its directory.

It is computed on the run's held-out test part when it has one (``data.test_fraction``), else on the
validation split that selected the checkpoint, and says which (:mod:`fusionkit.evaluate.scope`).
What it writes (all atomically):

- ``metrics.md`` / ``metrics.csv`` / ``metrics.json``: the paper's Table 5 layout (nine rows, the
  mean and every class) from :func:`fusionkit.metrics.isic_metrics`;
- ``confusion_matrix.png``, ``reliability.png``, ``roc.png``, ``history.png``;
- ``gate.png`` and ``gate.json``: the ADF weights (alpha_I, alpha_IM, alpha_M) per class and for
  correct versus wrong predictions (decisions with weights only);
- ``gradcam.png``: Grad-CAM overlays on both images of a few lesions;
- ``ablation.md``: the macro metrics with each modality masked out at inference (Table 2's
  question answered without retraining);
- ``calibration.json``: ECE before and after temperature scaling fitted on the validation split;
- ``decision.json``: macro Dice and AUC under each decision rule (probs, argmax, fitted
  thresholds), without and with the test-time augmentation asked for;
- ``predictions.csv``: the evaluated posteriors in the MILK10k submission format;
- ``evaluated.json``: what the numbers are computed on (``test``, ``validation``, ``folder`` or
  ``in-sample``) and how many lesions;
- ``subgroups.json`` / ``.md`` / ``.png`` and ``referral.json`` / ``.md`` / ``risk_coverage.png``:
  the subgroup and "knowing when to refer" sections (:mod:`fusionkit.evaluate.trust`), from the
  same posteriors; a ``robustness.json`` written by ``evaluate --robustness`` is summarised too;
- ``report.md``: one page that shows all of the above.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from fusionkit.data import CLASS_NAMES, Milk10kDataset, normalize_batch
from fusionkit.errors import FusionkitError
from fusionkit.evaluate.figures import plot_gradcam_grid, plot_history
from fusionkit.evaluate.gradcam import gradcam
from fusionkit.evaluate.plots import (
    gate_weight_table,
    plot_confusion_matrix,
    plot_gate_weights,
    plot_reliability_diagram,
    plot_roc_curves,
)
from fusionkit.evaluate.rule_table import rule_table_markdown, rule_table_rows
from fusionkit.evaluate.scope import IN_SAMPLE_LABEL, EvaluationScope, evaluation_scope
from fusionkit.evaluate.tables import ablation_table, table5_markdown, write_table5
from fusionkit.evaluate.trust import trust_sections
from fusionkit.inference.decision import DecisionRecord
from fusionkit.inference.pipeline import FusionPipeline, load_run
from fusionkit.inference.submission import write_submission
from fusionkit.metrics import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    isic_metrics,
)
from fusionkit.metrics.isic import METRIC_KEYS
from fusionkit.runtime.predict import Predictions
from fusionkit.runtime.rundir import RunDir
from fusionkit.runtime.tta import check_tta
from fusionkit.utils.faults import fault_point
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import markdown_row, markdown_table

logger = logging.getLogger("fusionkit.evaluate")

ABLATION_METRICS = (*METRIC_KEYS, "balanced_accuracy", "multiclass_accuracy")
"""The ablation table's columns: Table 5's per-class metrics, then the two whole-set accuracies."""
GATE_COLUMNS = ("mean alpha_I", "mean alpha_IM", "mean alpha_M")


def loss_text(loss: Any) -> str:
    """Eq 7 as trained, with only its non-zero terms: ``CE(P_final) + 0.5 L_IM + 0.25 L_I + 0.25 L_M``."""
    terms = [("L_IM", loss.lambda_joint), ("L_I", loss.lambda_image), ("L_M", loss.lambda_meta)]
    text = "CE(P_final)" + "".join(f" + {w:g} {name}" for name, w in terms if w)
    if not any(w for _, w in terms):
        text += " only (no auxiliary branch losses)"
    return text + (" (class-weighted)" if loss.class_weights is not None else "")


def modality_ablation(
    run: FusionPipeline,
    dataset: Milk10kDataset,
    *,
    progress: bool = False,
    baseline: Predictions | None = None,
    tta: str = "none",
) -> dict[str, dict[str, float]]:
    """Macro metrics with all inputs, then with each modality masked out through the presence masks.

    ``tta`` is the test-time augmentation of every row (that of ``baseline``, when given).

    ``baseline``, when given, holds the predictions with all inputs (they are not recomputed). A
    masking that leaves a sample with nothing to decide on (a single-modality model) is skipped.
    """
    results: dict[str, dict[str, float]] = {}
    names = {"derm": "without D", "clinical": "without C", "meta": "without M"}
    for absent in [(), *[(m,) for m in run.config.model.modalities]]:
        label = "all inputs" if not absent else names[absent[0]]
        if not absent and baseline is not None:
            preds = baseline
        else:
            try:
                preds = run.predict_dataset(
                    dataset, absent=absent, progress=progress, desc=f"ablation: {label}", tta=tta
                )
            except FusionkitError as exc:
                logger.info("modality ablation %s skipped: %s", label, exc)
                continue
        row = dict(isic_metrics(preds.labels, preds.probs, CLASS_NAMES)["macro"])
        if preds.weights is not None:
            for i, name in enumerate(("alpha_I", "alpha_IM", "alpha_M")):
                row[f"mean {name}"] = float(preds.weights[:, i].mean())
        results[label] = row
    return results


def _gradcam_figure(
    run: FusionPipeline, dataset: Milk10kDataset, preds: Predictions, n: int, path: Path
) -> Path | None:
    images = run.config.model.image_modalities
    if n <= 0 or not images or len(dataset) == 0:
        return None
    # the first n lesions in dataset order, those with every image present first
    complete = [i for i, r in enumerate(dataset.records) if r.derm is not None and r.clinical is not None]
    taken = set(complete)
    rest = [i for i in range(len(dataset)) if i not in taken]
    chosen = (complete + rest)[:n]
    items = [dataset[i] for i in chosen]
    batch = torch.utils.data.default_collate(items)
    preprocessing = run.model.preprocessing  # what the model's image encoders declare
    if preprocessing is None:  # no image inputs
        return None
    device_batch = normalize_batch(batch, mean=preprocessing.mean, std=preprocessing.std, device=run.device)
    maps = {m: gradcam(run.model, device_batch, modality=m).cpu().numpy() for m in images}
    pred_index = {lesion: i for i, lesion in enumerate(preds.lesion_ids)}
    titles = []
    for item in items:
        i = pred_index.get(item["lesion_id"])
        guess = CLASS_NAMES[int(preds.probs[i].argmax())] if i is not None else "?"
        truth = CLASS_NAMES[item["label"]] if "label" in item else "?"
        titles.append(f"{item['lesion_id']}  truth {truth}  predicted {guess}")
    raw = {m: batch[m].numpy() for m in images}
    return plot_gradcam_grid(raw, maps, titles, path)


def _markdown_image(title: str, name: str) -> str:
    return f"### {title}\n\n![{title}]({name})\n"


def evaluate_run(
    run_dir: str | Path,
    *,
    data_root: str | Path | None = None,
    gradcam_lesions: int = 4,
    progress: bool = False,
    checkpoint: str = "best",
    tta: str = "none",
    out: str | Path | None = None,
    allow_training_lesions: bool = False,
) -> Path:
    """Evaluate a run's checkpoint and write the report (see the module docstring); returns report.md.

    Without ``data_root`` the run's held-out test part is evaluated, or its validation split when it
    has none (the report then says the numbers are on the selection split); with it, the labelled
    Training split of that MILK10k folder, refused when it holds lesions the run trained on unless
    ``allow_training_lesions`` (the report is then labelled in-sample and written to ``out`` or
    ``RUN/in-sample/``, never over the run's own). ``out``: the report's folder (default the run
    directory). ``tta`` (``none``, ``flips``, ``d4``) is the test-time augmentation of the headline
    metrics; the decision table shows them without it as well.
    """
    check_tta(tta)
    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint=checkpoint)
    val_set = run.validation_dataset()
    scope = evaluation_scope(
        run, run_dir=run_dir, data_root=data_root, out=out, allow_training_lesions=allow_training_lesions
    )
    dataset, dest = scope.dataset, scope.out_dir
    if not dataset.labelled:
        raise FusionkitError(f"{dataset.files.metadata_csv}: evaluation needs a labelled split (ground truth)")
    dest.mkdir(parents=True, exist_ok=True)
    preds = run.predict_dataset(dataset, progress=progress, desc="evaluate", tta=tta)
    labels = preds.labels
    metrics = isic_metrics(labels, preds.probs, CLASS_NAMES)
    write_table5(metrics, dest, stem="metrics")
    write_submission(dest / "predictions.csv", preds.lesion_ids, preds.probs, CLASS_NAMES)
    atomic_write_text(dest / "evaluated.json", json.dumps(scope.record(), indent=2))
    fault_point("report.figures")
    predicted = preds.probs.argmax(axis=1)

    figures: list[tuple[str, str]] = []
    plot_confusion_matrix(labels, predicted, CLASS_NAMES, dest / "confusion_matrix.png")
    figures.append(("Confusion matrix (rows: truth, normalised)", "confusion_matrix.png"))
    plot_reliability_diagram(preds.probs, labels, dest / "reliability.png")
    figures.append(("Reliability diagram", "reliability.png"))
    plot_roc_curves(labels, preds.probs, CLASS_NAMES, dest / "roc.png")
    figures.append(("ROC curves per class", "roc.png"))

    # calibration: temperature fitted on the run's validation split
    on_validation = scope.on_validation
    val_preds = preds if on_validation else run.predict_dataset(val_set, desc="validation", tta=tta)
    temperature = fit_temperature(val_preds.log_probs, val_preds.labels)
    calibrated = apply_temperature(preds.log_probs, temperature)
    calibration = {
        "ece": expected_calibration_error(preds.probs, labels),
        "temperature": temperature,
        "ece_after_temperature": expected_calibration_error(calibrated, labels),
        "fitted_on": "validation split" + (" (the evaluated split itself)" if on_validation else ""),
        "n_bins": 15,
    }
    atomic_write_text(dest / "calibration.json", json.dumps(calibration, indent=2))

    evaluated, validation = {tta: preds}, {tta: val_preds}
    if tta != "none":
        plain = run.predict_dataset(dataset, progress=progress, desc="evaluate without TTA")
        evaluated = {"none": plain, tta: preds}
        validation = {
            "none": plain if on_validation else run.predict_dataset(val_set, desc="validation"),
            tta: val_preds,
        }
    decisions = rule_table_rows(evaluated, validation)
    atomic_write_text(
        dest / "decision.json",
        json.dumps(
            {
                "rows": decisions,
                "thresholds_fitted_on": "validation split" + (" (the evaluated split itself)" if on_validation else ""),
            },
            indent=2,
        ),
    )

    gate_md = ""
    if preds.weights is not None:
        plot_gate_weights(preds.weights, labels, predicted, CLASS_NAMES, dest / "gate.png")
        table = gate_weight_table(preds.weights, labels, predicted, CLASS_NAMES)
        atomic_write_text(dest / "gate.json", json.dumps(table, indent=2, default=float))
        gate_md = _gate_markdown(table)
        figures.append(("Adaptive decision fusion weights (which modality the gate trusted)", "gate.png"))

    history = json.loads(RunDir(run_dir).history.read_text()) if RunDir(run_dir).history.is_file() else []
    if history:
        plot_history(history, dest / "history.png")
        figures.append(("Training history", "history.png"))
    cam = _gradcam_figure(run, dataset, preds, gradcam_lesions, dest / "gradcam.png")
    if cam is not None:
        figures.append(("Grad-CAM on the first lesions (warmer: more weight in the decision)", "gradcam.png"))

    ablation = modality_ablation(run, dataset, progress=progress, baseline=preds, tta=tta)
    columns = list(ABLATION_METRICS)
    if any(GATE_COLUMNS[0] in row for row in ablation.values()):
        columns += GATE_COLUMNS
    ablation_md = ablation_table(ablation, metrics=columns) if len(ablation) > 1 else ""
    if ablation_md:
        atomic_write_text(dest / "ablation.md", ablation_md + "\n")

    by_id = {r.lesion_id: r for r in dataset.records}
    trust_md = trust_sections([by_id[i] for i in preds.lesion_ids], labels, preds.probs, CLASS_NAMES, dest)

    report = _report_markdown(
        run,
        metrics,
        calibration,
        gate_md,
        ablation_md,
        figures,
        scope,
        data_root,
        decision_md=_decision_section(decisions, tta, on_validation, stored=run.decision),
        trust_md=trust_md,
    )
    path = dest / RunDir(run_dir).report.name
    atomic_write_text(path, report)
    return path


def _decision_section(rows: list[dict[str, Any]], tta: str, on_validation: bool, *, stored: DecisionRecord) -> str:
    where = "the evaluated split itself (in-sample)" if on_validation else "the run's validation split"
    carried = "The run stores no decision rule (trained before fusionkit stored one)."
    if stored.thresholds is not None:
        fitted = [c for c, f in zip(stored.class_names, stored.fitted or (), strict=True) if f]
        carried = (
            f"The model carries the `{stored.rule}` rule (`inference.json`), fitted at the end of training on "
            f"{stored.lesions} validation lesions: thresholds for {', '.join(fitted) or 'no class'}; the other "
            f"classes keep 0.5 (fewer than {stored.min_positives} validation positives). `fusionkit predict` "
            "uses it; under it the CSV holds decision scores, not probabilities."
        )
    return "\n".join(
        [
            "## Test-time augmentation and decision rule",
            "",
            f"Headline metrics above use TTA `{tta}` and the posteriors (`probs`). Macro Dice counts a class "
            "as predicted when its value is > 0.5; `argmax` submits the one-hot top class, `thresholds` "
            f"rescales each class at a threshold fitted for Dice on {where}.",
            "",
            rule_table_markdown(rows),
            "",
            carried,
            "",
            "",
        ]
    )


def _gate_markdown(table: dict[str, Any]) -> str:
    rows = markdown_table(["group", "n", "alpha_I", "alpha_IM", "alpha_M"], [])

    def add(name: str, entry: dict[str, Any]) -> None:
        if entry.get("count", 0):
            rows.append(markdown_row([name, entry["count"], *(f"{float(entry[b]):.3f}" for b in table["branches"])]))

    add("all", table["all"])
    add("correct", table["correct"])
    add("wrong", table["wrong"])
    for name, entry in table["per_class"].items():
        add(name, entry)
    return "\n".join(rows)


def _report_markdown(
    run: FusionPipeline,
    metrics: dict[str, Any],
    calibration: dict[str, Any],
    gate_md: str,
    ablation_md: str,
    figures: list[tuple[str, str]],
    scope: EvaluationScope,
    data_root: str | Path | None,
    *,
    decision_md: str = "",
    trust_md: str = "",
) -> str:
    spec = run.config.model
    info = run.checkpoint_info
    macro = metrics["macro"]
    title = f"# fusionkit report: {spec.name or 'model'}"
    if scope.scope == "in-sample":
        title += f", {IN_SAMPLE_LABEL}"
    lines = [
        title,
        "",
        f"Run `{run.run_dir}`, checkpoint from epoch {info.get('epoch', '?')}, {scope.headline(data_root)}.",
        "",
        f"**Macro Dice (the MILK10k headline metric) {macro['dice']:.3f}**, macro AUC {macro['auc']:.3f}, "
        f"multiclass accuracy {macro['multiclass_accuracy']:.3f}, balanced accuracy "
        f'{macro["balanced_accuracy"]:.3f}, mean one-vs-rest accuracy (Table 5 "Accuracy") '
        f"{macro['accuracy']:.3f}. "
        f"ECE {calibration['ece']:.3f} ({calibration['ece_after_temperature']:.3f} after temperature "
        f"scaling, T = {calibration['temperature']:.2f}).",
        "",
        f"Model: modalities {', '.join(spec.modalities)}; image encoder "
        f"`{spec.image_encoder.display_name}`; fusion "
        f"`{spec.fusion.kind if spec.fusion else 'none'}`; decision `{spec.decision.kind}`; "
        f"loss {loss_text(spec.loss)}.",
        "",
    ]
    if metrics.get("empty_classes"):
        lines += [f"Classes without positives in this set (AUC undefined): {', '.join(metrics['empty_classes'])}.", ""]
    lines += [
        "## Metrics (Table 5 layout)",
        "",
        table5_markdown(metrics),
        "",
        "Also as [CSV](metrics.csv) and [JSON](metrics.json); posteriors in [predictions.csv](predictions.csv).",
        "",
    ]
    if ablation_md:
        lines += [
            "## Modality ablation at inference",
            "",
            "The same model with one modality marked absent in the presence masks (no retraining).",
            "",
            ablation_md,
            "",
        ]
    if gate_md:
        lines += ["## What the fusion gate trusted", "", "Mean ADF weights by group.", "", gate_md, ""]
    if decision_md:
        lines.append(decision_md)
    if trust_md:
        lines.append(trust_md)
    lines += ["## Figures", ""]
    for title, name in figures:
        lines.append(_markdown_image(title, name))
    return "\n".join(lines)
