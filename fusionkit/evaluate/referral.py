"""The "knowing when to refer" section: conformal set coverage and selective prediction.

:func:`referral_report` scores labelled posteriors (the run's validation split): the held-out
coverage and mean size of split-conformal sets per class, for each method and for marginal and
class-conditional calibration (:func:`~fusionkit.metrics.conformal.split_conformal_evaluation`:
calibrated on one random half, measured on the other, averaged over splits), the risk-coverage
curve with its AURC, and the macro metrics when the least confident 10/20/30 % are referred.
:func:`write_referral` writes ``referral.json``, ``referral.md`` and ``risk_coverage.png``.
The sets for a submission are calibrated on the whole validation split with
:func:`~fusionkit.metrics.conformal.calibrate_conformal` and written with
:func:`~fusionkit.metrics.conformal.write_prediction_sets`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fusionkit.evaluate.plots import save_figure
from fusionkit.metrics.conformal import ConformalMethod, split_conformal_evaluation
from fusionkit.metrics.selective import referral_metrics, risk_coverage
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import markdown_row, markdown_table, write_json

__all__ = ["REFERRAL_FILES", "plot_risk_coverage", "referral_markdown", "referral_report", "write_referral"]

#: File names written by :func:`write_referral`.
REFERRAL_FILES = {"json": "referral.json", "markdown": "referral.md", "figure": "risk_coverage.png"}


def referral_report(
    probs: Any,
    y_true: Any,
    class_names: Sequence[str],
    *,
    alpha: float = 0.1,
    methods: Sequence[ConformalMethod] = ("lac", "aps"),
    class_conditional: Sequence[bool] = (False, True),
    n_splits: int = 20,
    seed: int = 0,
    fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3),
) -> dict[str, Any]:
    """Conformal coverage per class, the risk-coverage curve and referral metrics.

    Returns:
        ``{"conformal": [split_conformal_evaluation(...), ...], "risk_coverage": {"coverage",
        "risk", "aurc", "e_aurc"}, "referral": referral_metrics(...)}``.
    """
    conformal = [
        split_conformal_evaluation(
            probs, y_true, class_names, alpha=alpha, method=m, class_conditional=c, n_splits=n_splits, seed=seed
        )
        for m in methods
        for c in class_conditional
    ]
    curve = risk_coverage(probs, y_true)
    return {
        "conformal": conformal,
        "risk_coverage": {
            "coverage": list(curve.coverage),
            "risk": list(curve.risk),
            "aurc": curve.aurc,
            "e_aurc": curve.e_aurc,
        },
        "referral": referral_metrics(probs, y_true, class_names, fractions=fractions),
    }


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def referral_markdown(report: dict[str, Any]) -> str:
    """The ``referral.md`` text."""
    lines = ["# Knowing when to refer", ""]
    conformal = report["conformal"]
    if conformal:
        first = conformal[0]
        lines += [
            f"## Conformal prediction sets (alpha {first['alpha']}: target coverage {1 - first['alpha']:.0%})",
            "",
            f"Held-out coverage and mean set size, calibrated on one random half of the lesions and measured on "
            f"the other, averaged over {first['n_splits']} splits.",
            "",
            *markdown_table(["sets", "coverage", "worst split", "mean size", "empty sets"], []),
        ]
        for c in conformal:
            label = c["method"].upper() + (", class-conditional" if c["class_conditional"] else "")
            lines.append(
                markdown_row(
                    [
                        label,
                        _cell(c["coverage"]),
                        _cell(c["coverage_min"]),
                        _cell(c["mean_size"], 2),
                        _cell(c["empty"], 1),
                    ]
                )
            )
        classes = list(first["per_class"])
        lines += ["", "Per true class (coverage / mean size):", ""]
        header = ["sets", *classes]
        lines += markdown_table(header, [])
        for c in conformal:
            label = c["method"].upper() + (", class-cond." if c["class_conditional"] else "")
            cells = [f"{_cell(v['coverage'], 2)} / {_cell(v['mean_size'], 1)}" for v in c["per_class"].values()]
            lines.append(markdown_row([label, *cells]))
        lines.append("")
    rc = report["risk_coverage"]
    lines += [
        "## Selective prediction",
        "",
        f"AURC {_cell(rc['aurc'], 4)} (excess over an ideal confidence ranking: {_cell(rc['e_aurc'], 4)}); "
        "confidence is the top posterior.",
        "",
    ]
    metrics = list(report["referral"][0]["metrics"]) if report["referral"] else []
    lines += markdown_table(["referred", "lesions kept", *metrics], [])
    for row in report["referral"]:
        lines.append(
            markdown_row(
                [f"{row['referred_fraction']:.0%}", str(row["kept"]), *[_cell(row["metrics"][m]) for m in metrics]]
            )
        )
    return "\n".join(lines) + "\n"


def plot_risk_coverage(report: dict[str, Any], path: str | Path) -> Path:
    """The risk-coverage curve, with the referral points (10/20/30 % referred) marked."""
    rc = report["risk_coverage"]
    fig = Figure(figsize=(5.5, 4.0), dpi=120)
    ax = fig.add_subplot()
    ax.plot(rc["coverage"], rc["risk"], color="#4C72B0", lw=1.5, label=f"risk (AURC {rc['aurc']:.3f})")
    n = len(rc["coverage"])
    for row in report["referral"]:
        if row["referred"] and row["kept"]:
            ax.plot(rc["coverage"][row["kept"] - 1], rc["risk"][row["kept"] - 1], "o", color="#DD8452")
            ax.annotate(
                f"refer {row['referred_fraction']:.0%}",
                (rc["coverage"][row["kept"] - 1], rc["risk"][row["kept"] - 1]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("coverage (share of lesions decided, most confident first)")
    ax.set_ylabel("error rate of the decided lesions")
    ax.set_title(f"Risk-coverage ({n} lesions)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_referral(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``referral.json``, ``referral.md`` and ``risk_coverage.png`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    paths = {key: out / name for key, name in REFERRAL_FILES.items()}
    write_json(paths["json"], report)
    atomic_write_text(paths["markdown"], referral_markdown(report))
    plot_risk_coverage(report, paths["figure"])
    return paths
