"""The report's trust sections: subgroups, knowing when to refer, and robustness when it was scored.

:func:`trust_sections` is called by :func:`~fusionkit.evaluate.report.evaluate_run` with the
validation posteriors the report already computed (nothing is predicted again), so it runs at the
end of every training. It writes

- ``subgroups.json`` / ``subgroups.md`` / ``subgroups.png``
  (:func:`~fusionkit.evaluate.subgroups.subgroup_table`: headline metrics by sex, skin tone, age
  band and site with bootstrap intervals; small strata withheld and named);
- ``referral.json`` / ``referral.md`` / ``risk_coverage.png``
  (:func:`~fusionkit.evaluate.referral.referral_report`: held-out conformal coverage and mean set
  size per class, the risk-coverage curve with its AURC, macro metrics when the least confident
  10/20/30 % are referred),

and returns the report's markdown for them, plus a robustness section that links
``robustness.md`` / ``robustness.png`` when ``fusionkit evaluate --robustness`` wrote them into the
same folder. :func:`refresh_robustness_section` puts that section into a report written before the
robustness was scored (``fusionkit sweep --robustness`` scores each run after its report).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionkit.data.tables import LesionRecord
from fusionkit.evaluate.referral import REFERRAL_FILES, referral_markdown, referral_report, write_referral
from fusionkit.evaluate.robustness.output import ROBUSTNESS_FILES
from fusionkit.evaluate.subgroups import SUBGROUP_FILES, subgroup_markdown, subgroup_table, write_subgroups
from fusionkit.utils.io import atomic_write_text
from fusionkit.utils.tables import markdown_row, markdown_table

__all__ = ["REPORT_BOOTSTRAP", "demote_headings", "refresh_robustness_section", "robustness_section", "trust_sections"]

_ROBUSTNESS_HEADING = "## Robustness per modality"

#: Bootstrap resamples of the report's subgroup intervals (kept small: it runs after every training).
REPORT_BOOTSTRAP = 200


def demote_headings(markdown: str, levels: int = 1) -> str:
    """Every markdown heading one (``levels``) level deeper, to nest a stand-alone page in the report."""
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in markdown.splitlines())


def trust_sections(
    records: Sequence[LesionRecord],
    labels: Any,
    probs: Any,
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    min_lesions: int = 5,
    n_boot: int = REPORT_BOOTSTRAP,
    alpha: float = 0.1,
    seed: int = 0,
) -> str:
    """Write the subgroup and referral files into ``out_dir``; return the report's markdown.

    ``records``, ``labels`` and ``probs`` describe the same lesions in the same order (the
    report's evaluated posteriors).
    """
    out = Path(out_dir)
    subgroups = subgroup_table(records, labels, probs, class_names, min_lesions=min_lesions, n_boot=n_boot, seed=seed)
    write_subgroups(subgroups, out)
    referral = referral_report(probs, labels, class_names, alpha=alpha, seed=seed)
    write_referral(referral, out)
    lines = [
        demote_headings(subgroup_markdown(subgroups)).rstrip(),
        "",
        f"![Subgroups]({SUBGROUP_FILES['figure']})",
        "",
        f"Also as [JSON]({SUBGROUP_FILES['json']}). A class with no lesion and no prediction in a stratum scores the "
        "official Dice of 1.0, so a small stratum holding few classes can read higher than the whole set; "
        "a gap inside the intervals is no evidence of a difference.",
        "",
        demote_headings(referral_markdown(referral)).rstrip(),
        "",
        f"![Risk-coverage]({REFERRAL_FILES['figure']})",
        "",
        f"Also as [JSON]({REFERRAL_FILES['json']}). `fusionkit predict RUN --data DIR --conformal {alpha:g}` writes "
        "the prediction sets of new lesions beside the submission, calibrated on this validation split.",
        "",
    ]
    robustness = robustness_section(out)
    if robustness:
        lines += [robustness, ""]
    return "\n".join(lines) + "\n"


def robustness_section(out_dir: str | Path) -> str:
    """A short report section on ``robustness.json`` in ``out_dir`` ("" when there is none)."""
    out = Path(out_dir)
    path = out / ROBUSTNESS_FILES["json"]
    if not path.is_file():
        return ""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        summary = document["summary"]
    except (ValueError, KeyError):
        return ""
    rows = markdown_table(["modality", "mean macro Dice", "mean relative drop [95 % CI]", "hurts most in", "worst"], [])
    ranked = sorted(summary.items(), key=lambda item: -_sortable(item[1].get("mean_relative_drop")))
    for modality, entry in ranked:
        worst = entry.get("worst") or {}
        interval = entry.get("mean_relative_drop_ci95") or [None, None]
        share = entry.get("hurts_most_share")
        drop = f"{_num(entry.get('mean_relative_drop'))} [{_num(interval[0])}, {_num(interval[1])}]"
        hurts = "-" if share is None else f"{100 * float(share):.0f} % of resamples"
        worst_at = f"{worst.get('corruption', '-')} @ {worst.get('severity', '-')}"
        rows.append(markdown_row([modality, _num(entry.get("mean_dice")), drop, hurts, worst_at]))
    mce = document.get("mce")
    tail = f" mCE against the baseline run: {_num(mce.get('mce'))}." if isinstance(mce, dict) else ""
    top, entry = ranked[0] if ranked else ("", {})
    if top and entry.get("mean_relative_drop") is not None and entry.get("hurts_most_share") is not None:
        tail += (
            f" The corruption of `{top}` hurts most (largest mean relative drop in "
            f"{100 * float(entry['hurts_most_share']):.0f} % of the bootstrap resamples)."
        )
    return "\n".join(
        [
            _ROBUSTNESS_HEADING,
            "",
            f"Scored by `fusionkit evaluate --robustness` on {document.get('n_lesions', '?')} lesions "
            f"(seed {document.get('seed', '?')}); full tables in [robustness.md]({ROBUSTNESS_FILES['markdown']})."
            + tail,
            "",
            *rows,
            "",
            f"![Macro Dice against severity]({ROBUSTNESS_FILES['figure']})",
        ]
    )


def refresh_robustness_section(out_dir: str | Path, report_name: str = "report.md") -> bool:
    """Put :func:`robustness_section` into ``out_dir/report_name``, replacing an older one, before
    the report's ``## Figures`` (or at its end); returns whether the report was rewritten (False
    when there is no report or no ``robustness.json``). Written atomically."""
    out = Path(out_dir)
    report, section = out / report_name, robustness_section(out)
    if not report.is_file() or not section:
        return False
    lines = report.read_text(encoding="utf-8").splitlines()
    if _ROBUSTNESS_HEADING in lines:  # drop the old section, up to the next second-level heading
        start = lines.index(_ROBUSTNESS_HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + lines[end:]
    at = lines.index("## Figures") if "## Figures" in lines else len(lines)
    lines = lines[:at] + section.splitlines() + [""] + lines[at:]
    atomic_write_text(report, "\n".join(lines).rstrip("\n") + "\n")
    return True


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _sortable(value: Any) -> float:
    """A drop for sorting: missing or NaN last."""
    return -float("inf") if value is None or value != value else float(value)
