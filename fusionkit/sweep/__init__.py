"""``fusionkit sweep``: the paper's ablations (Tables 2-3, Figure 3) as one resumable command.

A plan of (variant, seed[, fold]) runs with paired splits (:mod:`~fusionkit.sweep.plan`), engines
that run them in this process, on a local GPU queue or through submitit
(:mod:`~fusionkit.sweep.execute`), two-level (runs and lesions) bootstrap intervals and paired differences against a reference
(:mod:`~fusionkit.sweep.stats`), the corrected t-test, Holm, detectable effects and DeLong's test
(:mod:`~fusionkit.sweep.significance`), and the summary files (:mod:`~fusionkit.sweep.summary`).
``fusionkit tune`` searches config values instead of a grid (:mod:`~fusionkit.sweep.tune`, its
``--param`` specs in :mod:`~fusionkit.sweep.params`; Optuna is the ``tune`` extra, imported on use).
"""

from fusionkit.sweep.execute import device_queue, execute_job, in_process, is_finished, submitit_engine
from fusionkit.sweep.plan import (
    GROUPS,
    SweepJob,
    bind_data_root,
    parse_seeds,
    plan_sweep,
    resolve_reference,
    select_presets,
)
from fusionkit.sweep.runner import build_image_caches, prepare_data_root, run_sweep
from fusionkit.sweep.significance import corrected_ttest, delong_macro_auc, holm, minimum_detectable_effect
from fusionkit.sweep.stats import PairedDifference, PairedRun, ScoredRun, metric_intervals, paired_difference
from fusionkit.sweep.summary import collect_records, summarize, write_summary

__all__ = [
    "GROUPS",
    "PairedDifference",
    "PairedRun",
    "ScoredRun",
    "SweepJob",
    "bind_data_root",
    "build_image_caches",
    "collect_records",
    "corrected_ttest",
    "delong_macro_auc",
    "device_queue",
    "execute_job",
    "holm",
    "in_process",
    "is_finished",
    "metric_intervals",
    "minimum_detectable_effect",
    "paired_difference",
    "parse_seeds",
    "plan_sweep",
    "prepare_data_root",
    "resolve_reference",
    "run_sweep",
    "select_presets",
    "submitit_engine",
    "summarize",
    "write_summary",
]
