"""The report's rule table (``decision.json``): macro Dice and macro AUC under each decision rule, with and without TTA.

A decision rule (:mod:`fusionkit.inference.decision`: ``probs``, ``argmax``, ``thresholds``) is what
a submission does with the posteriors after the model; the model's own decision head (eq 5,
``ModelSpec.decision``) is another thing.

Shows the trade-off of :mod:`fusionkit.inference.decision`: one-hot argmax fixes the lesions with no
class above 0.5 but loses the ranking AUC needs; fitted thresholds keep each class's ranking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fusionkit.data import CLASS_NAMES
from fusionkit.inference.decision import DECISION_RULES, MIN_POSITIVES, apply_decision, fit_thresholds
from fusionkit.metrics import isic_metrics
from fusionkit.metrics.isic import POSITIVE_THRESHOLD
from fusionkit.runtime.predict import Predictions
from fusionkit.utils.tables import markdown_table


def rule_table_rows(
    evaluated: Mapping[str, Predictions], validation: Mapping[str, Predictions]
) -> list[dict[str, Any]]:
    """One row per (TTA mode, decision rule): macro Dice, macro AUC, lesions with no class > 0.5.

    ``evaluated`` and ``validation`` map a TTA mode to predictions of the evaluated set and of the
    validation split the thresholds are fitted on (the same object when evaluating the validation split);
    as for the stored rule, a class with fewer than ``MIN_POSITIVES`` validation positives keeps 0.5.
    """
    rows = []
    for tta, preds in evaluated.items():
        val = validation[tta]
        thresholds = fit_thresholds(val.labels, val.probs, min_positives=MIN_POSITIVES)
        for rule in DECISION_RULES:
            values = apply_decision(preds.probs, rule, thresholds=thresholds)
            macro = isic_metrics(preds.labels, values, CLASS_NAMES)["macro"]
            rows.append(
                {
                    "tta": tta,
                    "decision": rule,
                    "dice": float(macro["dice"]),
                    "auc": float(macro["auc"]),
                    "no_positive": float(np.mean(values.max(axis=1) <= POSITIVE_THRESHOLD)),
                    "thresholds": list(thresholds) if rule == "thresholds" else None,
                }
            )
    return rows


def rule_table_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`rule_table_rows` as a Markdown table."""
    header = ["TTA", "decision", "macro Dice", "macro AUC", f"lesions with no class > {POSITIVE_THRESHOLD}"]
    cells = [[r["tta"], r["decision"], f"{r['dice']:.3f}", f"{r['auc']:.3f}", f"{r['no_positive']:.1%}"] for r in rows]
    return "\n".join(markdown_table(header, cells))
