"""Robustness across a sweep: ``fusionkit sweep --robustness``.

:func:`score_sweep_robustness` runs :func:`~fusionkit.evaluate.robustness.run.evaluate_robustness`
on every finished run of a sweep (the same corruptions, severities and seed for all, so the
variants are compared on identical corrupted inputs), the reference variant's runs first so that
every other run's ``robustness.json`` carries the mCE against the reference run of its own seed
(and fold). :func:`robustness_summary` reads them back for the sweep summary: per variant, the
mean relative Dice drop per corrupted modality (over its graded corruptions and severities, then
over runs) and the mean mCE against the reference.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fusionkit.evaluate.robustness import ROBUSTNESS_FILES, SEVERITIES, evaluate_robustness
from fusionkit.evaluate.trust import refresh_robustness_section

__all__ = ["robustness_summary", "score_sweep_robustness"]

logger = logging.getLogger("fusionkit.sweep")


def _key(record: dict[str, Any]) -> tuple[Any, Any]:
    return record["seed"], record["fold"]


def score_sweep_robustness(
    records: Sequence[dict[str, Any]],
    *,
    reference: str,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    n_boot: int = 1000,
    echo: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``robustness.json`` (and .md, .png) into every finished run and its section into the
    run's ``report.md``; returns the JSON paths.

    Runs of the reference variant go first; each other run gets the mCE against the reference run
    with its seed and fold, when that run finished.
    """
    ok = [r for r in records if r["status"] == "ok"]
    ordered = sorted(ok, key=lambda r: r["preset"] != reference)
    baselines: dict[tuple[Any, Any], Path] = {}
    written = []
    for record in ordered:
        run_dir = Path(record["run_dir"])
        baseline = None if record["preset"] == reference else baselines.get(_key(record))
        if echo:
            echo(f"robustness: {record['preset']} seed {record['seed']}" + ("" if baseline is None else " (mCE)"))
        paths = evaluate_robustness(
            run_dir,
            baseline_run=baseline,
            corruptions=corruptions,
            severities=severities,
            seed=seed,
            n_boot=n_boot,
        )
        refresh_robustness_section(run_dir)  # the run's report was written before its robustness
        if record["preset"] == reference:
            baselines[_key(record)] = paths["json"]
        written.append(paths["json"])
    return written


def robustness_summary(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant with scored runs: ``{"n_runs", "mean_relative_drop": {modality: value},
    "mce": mean mCE against the reference or None}`` from the runs' ``robustness.json``."""
    by_preset: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("status") != "ok" or not record.get("run_dir"):
            continue
        path = Path(record["run_dir"]) / ROBUSTNESS_FILES["json"]
        if not path.is_file():
            continue
        try:
            by_preset.setdefault(record["preset"], []).append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError:
            logger.warning("%s: not readable JSON; left out of the sweep's robustness column", path)
    out: dict[str, dict[str, Any]] = {}
    for preset, documents in by_preset.items():
        drops: dict[str, list[float]] = {}
        for document in documents:
            for modality, entry in document.get("summary", {}).items():
                value = entry.get("mean_relative_drop")
                if value is not None:
                    drops.setdefault(modality, []).append(float(value))
        mces = [float(d["mce"]["mce"]) for d in documents if isinstance(d.get("mce"), dict) and d["mce"].get("mce")]
        out[preset] = {
            "n_runs": len(documents),
            "mean_relative_drop": {m: _mean(v) for m, v in drops.items()},
            "mce": _mean(mces) if mces else None,
        }
    return out


def _mean(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None
