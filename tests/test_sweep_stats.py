"""The sweep's statistics: the two-level bootstrap, the corrected t-test, Holm, the detectable effect,
DeLong's test, and the summary built from them (run directories written here, no training)."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from fusionkit.data import CLASS_NAMES
from fusionkit.errors import ConfigError
from fusionkit.metrics import isic_metrics
from fusionkit.sweep import PairedRun, ScoredRun, metric_intervals, paired_difference, summarize
from fusionkit.sweep.execute import MACRO_KEYS
from fusionkit.sweep.significance import (
    STATSMODELS_MISSING,
    corrected_ttest,
    delong_macro_auc,
    holm,
    minimum_detectable_effect,
    split_ratio,
)
from fusionkit.sweep.stats import (
    METRICS,
    MIN_CLASS_LESIONS,
    hierarchical_bootstrap,
    small_classes,
    stratified_weights,
    weighted_macro_metrics,
)
from fusionkit.sweep.summary import summary_csv, summary_markdown

K = len(CLASS_NAMES)
NAMES = [str(i) for i in range(K)]


def one_hot(classes: np.ndarray) -> np.ndarray:
    """Posteriors that predict ``classes`` (0.9 on the class, 0.01 elsewhere)."""
    return np.eye(K)[classes] * 0.89 + 0.01


def seed_run(seed: int, difference: float, *, n: int = 2000, base: float = 0.6) -> PairedRun:
    """A seed where the variant classifies ``difference`` more of the lesions correctly than the
    reference (the same lesions, errors nested), so its macro Dice is about ``difference`` higher."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % K
    u = rng.random(n)
    wrong = (labels + 1) % K
    return PairedRun(
        labels=labels,
        variant=one_hot(np.where(u < base + difference, labels, wrong)),
        reference=one_hot(np.where(u < base, labels, wrong)),
        seed=seed,
        n_train=4 * n,
    )


def random_pair(rng: np.random.Generator, n: int, *, seed: int | None = None) -> PairedRun:
    labels = rng.integers(0, K, n)
    return PairedRun(
        labels=labels,
        variant=rng.dirichlet(np.full(K, 0.3), n),
        reference=rng.dirichlet(np.full(K, 0.3), n),
        seed=seed,
    )


# -- the two-level interval ---------------------------------------------------------------------------
def test_seed_noise_interval_holds_zero_and_consistent_difference_excludes_it() -> None:
    """The issue's case: +0.10, -0.10, +0.05 over three seeds of 2,000 lesions is no evidence."""
    noisy = paired_difference([seed_run(s, d) for s, d in zip((0, 1, 2), (0.10, -0.10, 0.05), strict=True)], "dice")
    assert [round(d, 2) for d in noisy.run_differences] == pytest.approx([0.09, -0.10, 0.05], abs=0.011)
    assert noisy.estimate == pytest.approx(np.mean(noisy.run_differences))
    assert noisy.interval[0] < 0 < noisy.interval[1]
    assert noisy.interval[0] < -0.05 and noisy.interval[1] > 0.05  # the seeds' spread, not lesion noise
    assert (noisy.n_runs, noisy.n_seeds, noisy.covers) == (3, 3, "runs and lesions")
    steady = paired_difference([seed_run(s, 0.05) for s in (0, 1, 2)], "dice")
    assert steady.interval[0] > 0 and steady.interval[0] <= steady.estimate <= steady.interval[1]


def test_one_run_covers_test_set_sampling_only() -> None:
    diff = paired_difference([seed_run(0, 0.05)], "dice", n_boot=200)
    assert (diff.n_runs, diff.covers) == (1, "lesions")
    assert 0 < diff.interval[0] < diff.estimate < diff.interval[1]
    same = seed_run(0, 0.0)
    assert paired_difference([same], "auc", n_boot=50).interval == [0.0, 0.0]


def test_hierarchical_bootstrap_equals_direct_draws() -> None:
    """Seeds, then folds within a drawn seed (unequal fold counts), as the docstring's draw order says."""
    groups = [[0, 1], [2], [3, 4, 5]]
    value = np.array([0.1, 0.4, -0.2, 0.3, 0.0, 0.7])
    labels = [np.array([0, 1, 1])] * 6
    boot = hierarchical_bootstrap(
        groups,
        labels,
        lambda run, w: np.full((w.shape[0], 1), value[run]),
        n_boot=400,
        rng=np.random.default_rng(5),
    )
    rng = np.random.default_rng(5)
    seeds = rng.integers(0, 3, size=(400, 3))
    u = rng.random((400, 3, 3))
    direct = [
        np.mean(
            [
                value[groups[g][int(u[b, j, f] * len(groups[g]))]]
                for j, g in enumerate(seeds[b])
                for f in range(len(groups[g]))
            ]
        )
        for b in range(400)
    ]
    assert boot[:, 0] == pytest.approx(direct, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(5, 40))
def test_intervals_stay_in_range_and_hold_the_estimate(seed: int, n_runs: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng, n, seed=s) for s in range(n_runs)]
    for metric in ("dice", "auc"):
        diff = paired_difference(pairs, metric, n_boot=60, seed=seed)
        assert -1 <= diff.interval[0] <= diff.interval[1] <= 1
    variant = metric_intervals(
        [ScoredRun(labels=p.labels, probs=p.variant, seed=p.seed) for p in pairs], n_boot=60, seed=seed
    )
    for m in METRICS:
        lo, hi = variant.interval[m]
        assert 0 <= lo <= hi <= 1
        assert lo - 0.25 <= variant.mean[m] <= hi + 0.25  # the estimate sits in the interval's neighbourhood
    assert variant.covers == ("lesions" if n_runs == 1 else "runs and lesions")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(4, 30))
def test_weighted_metrics_equal_isic_metrics_on_repeated_lesions(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    probs = rng.dirichlet(np.full(K, 0.3), n)
    probs[0] = np.round(probs[0], 1)  # ties
    weights = rng.integers(0, 3, size=(2, n))
    weights[1] = 1
    for row in weights:
        idx = np.repeat(np.arange(n), row)
        if idx.size == 0:
            continue
        macro = isic_metrics(labels[idx], probs[idx], NAMES)["macro"]
        got = weighted_macro_metrics(labels, probs, row[None])[0]
        expected = [macro[m] for m in METRICS]
        assert got == pytest.approx(expected, abs=1e-12, nan_ok=True)


@given(st.integers(0, 2**16), st.integers(1, 60))
def test_stratified_resamples_keep_every_class(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    weights = stratified_weights(labels, 20, rng)
    counts = np.stack([weights[:, labels == c].sum(axis=1) for c in range(K)], axis=1)
    assert (counts == np.bincount(labels, minlength=K)).all()


def test_small_split_rule() -> None:
    labels = np.array([0] * MIN_CLASS_LESIONS + [1] * (MIN_CLASS_LESIONS - 1) + [2])
    assert small_classes(labels, 4) == {1: MIN_CLASS_LESIONS - 1, 2: 1, 3: 0}


# -- tests --------------------------------------------------------------------------------------------
def test_corrected_ttest_equals_the_formula_on_a_worked_example() -> None:
    """Five runs, 200 validation and 800 training lesions each (ratio 0.25)."""
    d = [0.02, 0.05, -0.01, 0.04, 0.03]
    ratio = split_ratio([200] * 5, [800] * 5)
    assert ratio == 0.25
    # mean 0.026; squared deviations 36+576+1296+196+16 = 2120 (1e-6), sample variance 530e-6
    t = 0.026 / math.sqrt((1 / 5 + 0.25) * 530e-6)
    assert t == pytest.approx(1.683562, abs=1e-6)
    test = corrected_ttest(d, ratio=ratio)
    assert (test.t, test.df) == (pytest.approx(t, rel=1e-12), 4)
    assert test.p == pytest.approx(2 * scipy_stats.t.sf(t, 4), rel=1e-12)
    assert 0.16 < test.p < 0.18
    plain = corrected_ttest(d, ratio=0.0)  # no correction: scipy's one-sample t-test
    reference = scipy_stats.ttest_1samp(d, 0.0)
    assert (plain.t, plain.p) == (pytest.approx(reference.statistic), pytest.approx(reference.pvalue))
    assert plain.p < test.p
    assert corrected_ttest([0.1, 0.1], ratio=0.2).p == 0.0 and corrected_ttest([0.0, 0.0], ratio=0.2).p == 1.0
    with pytest.raises(ValueError):
        corrected_ttest([0.1], ratio=0.2)


def test_holm_equals_statsmodels_on_a_worked_example() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


@settings(max_examples=8, deadline=None)  # multipletests runs gc.collect() on every call
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_equals_statsmodels(p_values: list[float]) -> None:
    assert holm(p_values) == pytest.approx(list(multipletests(p_values, method="holm")[1]), abs=1e-15)


@settings(deadline=None)
@given(st.integers(2, 30), st.floats(0.001, 0.2), st.sampled_from([0.0, 0.1, 0.25, 1.0]))
def test_detectable_effect_has_80_percent_power(n_runs: int, spread: float, ratio: float) -> None:
    """Direct: the corrected test's power at the effect, from the noncentral t distribution."""
    mde = minimum_detectable_effect(spread, n_runs, ratio=ratio)
    df = n_runs - 1
    nc = mde / (spread * math.sqrt(1 / n_runs + ratio))
    crit = scipy_stats.t.ppf(0.975, df)
    power = scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=1e-5)
    if ratio == 0.0:  # the uncorrected test: TTestPower's effect size times the spread
        d = TTestPower().solve_power(nobs=n_runs, alpha=0.05, power=0.8)
        assert mde == pytest.approx(d * spread, rel=1e-9)


def test_detectable_effect_example() -> None:
    """Three seeds that disagree by 0.1 cannot detect less than a large difference."""
    mde = minimum_detectable_effect(0.1, 3, ratio=0.25)
    assert 0.2 < mde < 0.5
    assert minimum_detectable_effect(0.1, 30, ratio=0.0) < 0.06


def test_statsmodels_missing_says_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.stats", None)
    monkeypatch.setitem(sys.modules, "statsmodels.stats.multitest", None)
    monkeypatch.setitem(sys.modules, "statsmodels.stats.power", None)
    with pytest.raises(ConfigError, match=r"pip install 'jiadf-fusion\[stats\]'") as err:
        holm([0.1])
    assert "\n" not in str(err.value) and str(err.value) == STATSMODELS_MISSING
    with pytest.raises(ConfigError):
        minimum_detectable_effect(0.1, 3)


def delong_direct(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) with the kernel written out: (difference, se)."""

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    comps = []
    for s in (a, b):
        pos, neg = s[truth], s[~truth]
        v10 = np.array([np.mean([psi(x, y) for y in neg]) for x in pos])
        v01 = np.array([np.mean([psi(x, y) for x in pos]) for y in neg])
        comps.append((v10, v01, v10.mean()))
    (a10, a01, auc_a), (b10, b01, auc_b) = comps
    m, n = truth.sum(), (~truth).sum()
    s10 = np.cov(np.stack([a10, b10]))
    s01 = np.cov(np.stack([a01, b01]))
    contrast = np.array([1.0, -1.0])
    var = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
    return auc_a - auc_b, math.sqrt(var)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(6, 40))
def test_delong_equals_the_direct_computation_for_two_classes(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.r_[0, 0, 1, 1, rng.integers(0, 2, n - 4)]
    p1a = np.round(rng.random(n), 1)  # ties
    p1b = np.clip(p1a + rng.normal(0, 0.3, n), 0, 1)
    a = np.stack([1 - p1a, p1a], axis=1)
    b = np.stack([1 - p1b, p1b], axis=1)
    diff, se = delong_direct(labels == 1, p1a, p1b)
    test = delong_macro_auc(labels, a, b)
    assert test.difference == pytest.approx(diff, abs=1e-12)
    assert test.difference == pytest.approx(roc_auc_score(labels, p1a) - roc_auc_score(labels, p1b), abs=1e-12)
    assert test.se == pytest.approx(se, rel=1e-9, abs=1e-12)
    if se > 0:
        assert test.p == pytest.approx(2 * scipy_stats.norm.sf(abs(diff / se)), rel=1e-9)


def test_delong_macro_auc_agrees_with_the_stratified_bootstrap() -> None:
    """Over several classes the DeLong standard error matches the lesion bootstrap's spread."""
    rng = np.random.default_rng(0)
    n = 900
    labels = rng.integers(0, 4, n)
    signal = np.eye(4)[labels]
    a = signal * 0.6 + rng.random((n, 4))
    b = signal * 0.5 + rng.random((n, 4)) * 0.5 + a * 0.5
    a, b = a / 1.6, b / 1.8  # scores in [0, 1], as posteriors are (AUC ignores the scaling)
    test = delong_macro_auc(labels, a, b)
    w = stratified_weights(labels, 2000, rng)
    boot = (weighted_macro_metrics(labels, a, w, ["auc"]) - weighted_macro_metrics(labels, b, w, ["auc"]))[:, 0]
    assert test.difference == pytest.approx(
        weighted_macro_metrics(labels, a, np.ones((1, n)), ["auc"])[0, 0]
        - weighted_macro_metrics(labels, b, np.ones((1, n)), ["auc"])[0, 0],
        abs=1e-12,
    )
    assert test.se == pytest.approx(boot.std(ddof=1), rel=0.1)


# -- the summary --------------------------------------------------------------------------------------
def fake_runs(
    root: Path, preset: str, pairs: list[tuple[int, int | None, np.ndarray, np.ndarray]], n_train: int
) -> list[dict]:
    """Run directories (predictions.csv, split.json) and records as the sweep writes them."""
    records = []
    for seed, fold, labels, probs in pairs:
        run_dir = root / preset / f"seed{seed}" / ("" if fold is None else f"fold{fold}")
        run_dir.mkdir(parents=True, exist_ok=True)
        ids = [f"IL_{seed}_{fold}_{i:05d}" for i in range(len(labels))]
        with open(run_dir / "predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["lesion_id", *CLASS_NAMES])
            writer.writerows([lesion, *row] for lesion, row in zip(ids, probs.tolist(), strict=True))
        (run_dir / "split.json").write_text(json.dumps({"train": [f"T{i}" for i in range(n_train)], "val": ids}))
        macro = isic_metrics(labels, probs, CLASS_NAMES)["macro"]
        records.append(
            {
                "preset": preset,
                "seed": seed,
                "fold": fold,
                "status": "ok",
                "run_dir": str(run_dir),
                "metrics": {k: macro[k] for k in MACRO_KEYS},
                "val_labels": {lesion: CLASS_NAMES[c] for lesion, c in zip(ids, labels, strict=True)},
            }
        )
    return records


def sweep_records(root: Path, *, seeds: tuple[int, ...], folds: tuple[int | None, ...], n: int) -> list[dict]:
    """ji-adf and two variants (one better, one worse by noise) over seeds x folds."""
    records = []
    runs: dict[str, list] = {"ji-adf": [], "derm-only": [], "meta-only": []}
    for seed in seeds:
        for fold in folds:
            rng = np.random.default_rng(100 * seed + (fold or 0))
            labels = np.arange(n) % K
            u = rng.random(n)
            wrong = (labels + 1) % K
            runs["ji-adf"].append((seed, fold, labels, one_hot(np.where(u < 0.6, labels, wrong))))
            runs["derm-only"].append((seed, fold, labels, one_hot(np.where(u < 0.5, labels, wrong))))
            runs["meta-only"].append(
                (seed, fold, labels, one_hot(np.where(u < 0.6 + rng.normal(0, 0.05), labels, wrong)))
            )
    for preset, pairs in runs.items():
        records += fake_runs(root, preset, pairs, n_train=4 * n)
    return records


def test_summary_with_folds_uses_the_corrected_test_and_holm(tmp_path: Path) -> None:
    records = sweep_records(tmp_path, seeds=(0, 1), folds=(0, 1, 2), n=220)
    summary = summarize(records, reference="ji-adf", n_boot=200)
    assert summary["variants"]["ji-adf"]["vs_reference"] is None
    tested = {p: summary["variants"][p]["vs_reference"] for p in ("derm-only", "meta-only")}
    for preset, vs in tested.items():
        assert (vs["n_runs"], vs["n_seeds"], vs["covers"]) == (6, 2, "runs and lesions")
        assert vs["ratio"] == pytest.approx(0.25)
        mine = [r for r in records if r["preset"] == preset]
        ref = [r for r in records if r["preset"] == "ji-adf"]
        diffs = [a["metrics"]["dice"] - b["metrics"]["dice"] for a, b in zip(mine, ref, strict=True)]
        assert vs["dice_diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
        assert vs["dice_p"] == pytest.approx(corrected_ttest(diffs, ratio=0.25).p, rel=1e-9)
        assert vs["dice_mde"] == pytest.approx(minimum_detectable_effect(np.std(diffs, ddof=1), 6, ratio=0.25))
        assert [d["seed"] for d in vs["auc_delong"]] == [0, 0, 0, 1, 1, 1]
    for metric in ("dice", "auc"):
        raw = [tested[p][f"{metric}_p"] for p in tested]
        assert [tested[p][f"{metric}_p_holm"] for p in tested] == pytest.approx(
            list(multipletests(raw, method="holm")[1])
        )
    derm = summary["variants"]["derm-only"]
    assert derm["vs_reference"]["dice_ci95"][1] < 0 and derm["vs_reference"]["dice_p_holm"] < 0.05
    assert derm["interval"] == {"n_runs": 6, "n_seeds": 2, "covers": "runs and lesions"}
    for k in MACRO_KEYS:
        lo, hi = derm["metrics"][k]["ci95"]
        assert 0 <= lo <= derm["metrics"][k]["mean"] <= hi <= 1
    assert summary["warnings"] == []
    text = summary_markdown(summary)
    assert "6 runs (2 seeds x folds)" in text
    assert "Holm-adjusted over the 2 variant(s)" in text
    assert "retraining the model with new seeds" in text and "4 times out of 5" in text
    header = summary_csv(summary).splitlines()[0].split(",")
    assert {"dice_p", "dice_p_holm", "dice_mde", "auc_ci95_lo", "covers"} <= set(header)


def test_summary_of_one_seed_says_test_set_sampling_only_and_warns_small_splits(tmp_path: Path) -> None:
    records = sweep_records(tmp_path, seeds=(0,), folds=(None,), n=40)
    summary = summarize(records, reference="ji-adf", n_boot=100)
    vs = summary["variants"]["derm-only"]["vs_reference"]
    assert vs["covers"] == "lesions" and vs["dice_p"] is None and vs["dice_mde"] is None
    assert len(vs["auc_delong"]) == 1 and vs["auc_delong"][0]["p"] < 1
    assert len(summary["warnings"]) == 1
    assert (
        f"Seed 0: the validation split has fewer than {MIN_CLASS_LESIONS} lesions of 11 class(es)"
        in (summary["warnings"][0])
    )
    text = summary_markdown(summary)
    assert "every interval covers test-set sampling only" in text
    assert "> **Warning:** Seed 0: the validation split" in text


def test_summary_without_statsmodels_says_so(tmp_path: Path, monkeypatch) -> None:
    records = sweep_records(tmp_path, seeds=(0, 1, 2), folds=(None,), n=60)
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    monkeypatch.setitem(sys.modules, "statsmodels.stats", None)
    monkeypatch.setitem(sys.modules, "statsmodels.stats.multitest", None)
    summary = summarize(records, reference="ji-adf", n_boot=50)
    vs = summary["variants"]["derm-only"]["vs_reference"]
    assert vs["dice_p"] is not None and vs["dice_p_holm"] is None and vs["dice_mde"] is None
    assert summary["warnings"][-1] == STATSMODELS_MISSING + "."
    assert STATSMODELS_MISSING in summary_markdown(summary)


def test_summary_marks_intervals_the_test_does_not_back_and_groups_split_warnings(tmp_path: Path) -> None:
    records = sweep_records(tmp_path, seeds=(0, 1), folds=(None,), n=50)
    summary = summarize(records, reference="ji-adf", n_boot=200)
    assert len(summary["warnings"]) == 1 and summary["warnings"][0].startswith("Seed 0, seed 1: the validation")
    text = summary_markdown(summary)
    marked = 0
    for preset in ("derm-only", "meta-only"):
        vs = summary["variants"][preset]["vs_reference"]
        row = [line for line in text.splitlines() if line.startswith(f"| `{preset}` | 2 runs | ")][-1]  # 2nd table
        cells = row.split(" | ")
        for metric, cell in (("dice", cells[2]), ("auc", cells[5])):
            lo, hi = vs[f"{metric}_ci95"]
            expected = vs[f"{metric}_p"] >= 0.05 and (lo > 0 or hi < 0)
            assert cell.endswith("†") == expected
            marked += expected
    assert marked > 0  # the case occurs here: two seeds that agree give a narrow bootstrap but p > 0.05
    assert ("† The interval excludes 0 but the corrected t-test" in text) == (marked > 0)
