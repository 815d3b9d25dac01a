"""Headline metrics by sex, skin tone, age band and body site, with bootstrap intervals.

Each attribute splits the lesions into strata (a blank value is its own stratum, ``"unknown"``).
A stratum with fewer than ``min_lesions`` lesions is withheld: named with its size, never scored
(following the MILK10k subgroup audits, which withhold strata below 5 lesions). Every other
stratum is scored with :func:`~fusionkit.metrics.isic.isic_metrics` on its own lesions, so its
values are exactly the ISIC metrics of that subset, with percentile bootstrap 95 % intervals
(:func:`~fusionkit.metrics.bootstrap.bootstrap_ci`, resampling within the stratum) and the gap to
the whole set (stratum minus whole).

Read the macro values of a small stratum with care: a class with no lesion and no prediction in
the stratum scores the official "freebie" Dice of 1.0 and has no AUC, so a stratum missing most
classes can read higher than the whole set. ``classes_present`` says how many classes a stratum
holds. fairlearn's ``MetricFrame`` could group the lesions, but it would add pandas as a run-time
dependency for a group-by of a few lines, and the intervals and the withholding rule would still be
written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fusionkit.data.tables import LesionRecord
from fusionkit.evaluate.plots import save_figure
from fusionkit.metrics.bootstrap import bootstrap_ci
from fusionkit.metrics.isic import check_class_names, check_probs, isic_metrics
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import markdown_row, markdown_table, write_json

__all__ = [
    "AGE_BANDS",
    "ATTRIBUTES",
    "SUBGROUP_FILES",
    "age_band",
    "plot_subgroups",
    "stratum_of",
    "subgroup_markdown",
    "subgroup_table",
    "write_subgroups",
]

#: Age bands ``(low, high, label)``, low inclusive, high exclusive.
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0.0, 30.0, "<30"),
    (30.0, 45.0, "30-44"),
    (45.0, 60.0, "45-59"),
    (60.0, 75.0, "60-74"),
    (75.0, math.inf, "75+"),
)
#: The attributes scored by default.
ATTRIBUTES: tuple[str, ...] = ("sex", "skin_tone", "age_band", "site")
#: File names written by :func:`write_subgroups`.
SUBGROUP_FILES = {"json": "subgroups.json", "markdown": "subgroups.md", "figure": "subgroups.png"}
UNKNOWN = "unknown"


def age_band(age: float | None) -> str:
    """The :data:`AGE_BANDS` label of an age (``"unknown"`` for ``None``)."""
    if age is None:
        return UNKNOWN
    for low, high, label in AGE_BANDS:
        if low <= age < high:
            return label
    raise ValueError(f"age {age} is in no band")


_GETTERS: dict[str, Callable[[LesionRecord], str]] = {
    "sex": lambda r: r.sex or UNKNOWN,
    "skin_tone": lambda r: UNKNOWN if r.skin_tone is None else str(r.skin_tone),
    "age_band": lambda r: age_band(r.age),
    "site": lambda r: r.site or UNKNOWN,
}


def stratum_of(record: LesionRecord, attribute: str) -> str:
    """The stratum of ``record`` for ``attribute`` (one of :data:`ATTRIBUTES`)."""
    try:
        return _GETTERS[attribute](record)
    except KeyError:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {', '.join(_GETTERS)}") from None


def _order(values: Sequence[str], attribute: str) -> list[str]:
    known = {"age_band": [label for _, _, label in AGE_BANDS]}.get(attribute)
    unique = set(values)
    if known:
        ordered = [v for v in known if v in unique]
    else:
        ordered = sorted(v for v in unique if v != UNKNOWN)
    return ordered + ([UNKNOWN] if UNKNOWN in unique else [])


def subgroup_table(
    records: Sequence[LesionRecord],
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    *,
    attributes: Sequence[str] = ATTRIBUTES,
    min_lesions: int = 5,
    metrics: Sequence[str] = ("dice", "auc", "multiclass_accuracy"),
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Score every stratum of every attribute.

    Args:
        records: the lesions' records, in the order of ``y_true`` and ``probs``.
        y_true: class indices ``(n,)``.
        probs: posteriors ``(n, k)``.
        class_names: the ``k`` class names.
        attributes: some of :data:`ATTRIBUTES`.
        min_lesions: strata with fewer lesions are withheld.
        metrics: macro metrics (keys of ``isic_metrics(...)["macro"]``).
        n_boot: bootstrap resamples per stratum.
        seed: bootstrap seed.

    Returns:
        ``{"min_lesions", "n_lesions", "metrics", "overall": {metric: value},
        "overall_ci95": {metric: [lo, hi]}, "attributes": {attribute: {"strata": [{"value", "n",
        "classes_present", "metrics", "ci95", "gap"}], "withheld": [{"value", "n"}]}}}``.
    """
    names = check_class_names(class_names)
    p = check_probs(probs, len(names))
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) != len(p) or len(records) != len(p):
        raise ValueError(
            f"records ({len(records)}), y_true ({y.shape}) and probs ({p.shape}) must hold the same lesions"
        )
    if min_lesions < 1:
        raise ValueError(f"min_lesions must be at least 1, got {min_lesions}")

    def score(index: np.ndarray) -> dict[str, Any]:
        macro = isic_metrics(y[index], p[index], names)["macro"]
        ci = bootstrap_ci(y[index], p[index], names, metrics=metrics, n_boot=n_boot, seed=seed)
        return {"metrics": {m: float(macro[m]) for m in metrics}, "ci95": {m: list(ci[m]) for m in metrics}}

    everything = score(np.arange(len(p)))
    out: dict[str, Any] = {
        "min_lesions": min_lesions,
        "n_lesions": len(p),
        "metrics": list(metrics),
        "overall": everything["metrics"],
        "overall_ci95": everything["ci95"],
        "attributes": {},
    }
    for attribute in attributes:
        values = [stratum_of(r, attribute) for r in records]
        strata, withheld = [], []
        for value in _order(values, attribute):
            index = np.flatnonzero(np.asarray(values) == value)
            if len(index) < min_lesions:
                withheld.append({"value": value, "n": int(len(index))})
                continue
            scored = score(index)
            strata.append(
                {
                    "value": value,
                    "n": int(len(index)),
                    "classes_present": int(len(np.unique(y[index]))),
                    **scored,
                    "gap": {m: scored["metrics"][m] - everything["metrics"][m] for m in metrics},
                }
            )
        out["attributes"][attribute] = {"strata": strata, "withheld": withheld}
    return out


def _cell(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.3f}"


_TITLES = {
    "sex": "Sex",
    "skin_tone": "Skin tone (Fitzpatrick-like class 0-5)",
    "age_band": "Age band",
    "site": "Body site",
}


def subgroup_markdown(result: dict[str, Any]) -> str:
    """The ``subgroups.md`` text: one table per attribute, withheld strata named below it."""
    metrics = result["metrics"]
    lines = [
        "# Subgroups",
        "",
        f"{result['n_lesions']} lesions; macro metrics with bootstrap 95 % intervals; gap = stratum minus whole set; "
        f"strata with fewer than {result['min_lesions']} lesions are withheld. Whole set: "
        + ", ".join(f"{m} {_cell(result['overall'][m])}" for m in metrics)
        + ".",
        "",
    ]
    for attribute, block in result["attributes"].items():
        lines += [
            f"## {_TITLES.get(attribute, attribute)}",
            "",
            *markdown_table(
                ["stratum", "lesions", "classes", *[f"{m} [95 % CI]" for m in metrics], *[f"gap {m}" for m in metrics]],
                [],
            ),
        ]
        for s in block["strata"]:
            cells = [f"{_cell(s['metrics'][m])} [{_cell(s['ci95'][m][0])}, {_cell(s['ci95'][m][1])}]" for m in metrics]
            lines.append(
                markdown_row(
                    [
                        s["value"],
                        str(s["n"]),
                        str(s["classes_present"]),
                        *cells,
                        *[_signed(s["gap"][m]) for m in metrics],
                    ]
                )
            )
        if block["withheld"]:
            named = ", ".join(f"{w['value']} ({w['n']})" for w in block["withheld"])
            lines += ["", f"Withheld (fewer than {result['min_lesions']} lesions): {named}."]
        lines.append("")
    return "\n".join(lines)


def plot_subgroups(result: dict[str, Any], path: str | Path, *, metric: str = "dice") -> Path:
    """One panel per attribute: ``metric`` of each stratum with its 95 % interval, the whole set's
    value as a vertical line; withheld strata are listed under the panel."""
    attributes = list(result["attributes"])
    if not attributes:
        raise ValueError("no attributes to plot")
    fig = Figure(figsize=(4.2 * len(attributes), 3.8), dpi=120)
    axes = fig.subplots(1, len(attributes), squeeze=False)[0]
    for ax, attribute in zip(axes, attributes, strict=True):
        block = result["attributes"][attribute]
        strata = block["strata"]
        ys = np.arange(len(strata))
        values = [s["metrics"][metric] for s in strata]
        low = [
            max(0.0, v - s["ci95"][metric][0]) if not math.isnan(v) else 0.0
            for v, s in zip(values, strata, strict=True)
        ]
        high = [
            max(0.0, s["ci95"][metric][1] - v) if not math.isnan(v) else 0.0
            for v, s in zip(values, strata, strict=True)
        ]
        ax.errorbar(values, ys, xerr=[low, high], fmt="o", color="#4C72B0", capsize=3)
        ax.axvline(result["overall"][metric], color="black", linestyle="--", lw=1, label="whole set")
        ax.set_yticks(ys, [f"{s['value']} (n={s['n']})" for s in strata])
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel(f"macro {metric}")
        ax.set_title(_TITLES.get(attribute, attribute), fontsize=10)
        if block["withheld"]:
            ax.text(
                0.0,
                -0.28,
                "withheld: " + ", ".join(f"{w['value']} ({w['n']})" for w in block["withheld"]),
                transform=ax.transAxes,
                fontsize=7,
                va="top",
            )
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Subgroups (strata under {result['min_lesions']} lesions withheld)")
    fig.tight_layout()
    return save_figure(fig, path)


def write_subgroups(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``subgroups.json``, ``subgroups.md`` and ``subgroups.png`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    paths = {key: out / name for key, name in SUBGROUP_FILES.items()}
    write_json(paths["json"], result)
    atomic_write_text(paths["markdown"], subgroup_markdown(result))
    plot_subgroups(result, paths["figure"])
    return paths
