"""Subgroups (issue 24) and the bootstrap intervals they and the robustness table use.

A stratum's metrics must be exactly ``isic_metrics`` of its own lesions; strata below the minimum
are withheld and named; the fast bootstrap of the macro Dice must equal ``isic_metrics`` on each
materialised resample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionkit.data.schema import SEXES, SITES
from fusionkit.data.tables import LesionRecord
from fusionkit.evaluate.subgroups import age_band, stratum_of, subgroup_table, write_subgroups
from fusionkit.metrics import isic_metrics
from fusionkit.metrics.bootstrap import WEIGHTED_METRICS, bootstrap_ci, resample_weights, weighted_macro_metrics

NAMES = ("AKIEC", "BCC", "MEL", "NV")


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), size=n)
    probs = 0.5 * rng.dirichlet(np.ones(len(NAMES)), size=n) + 0.5 * np.eye(len(NAMES))[labels]
    flip = rng.random(n) < 0.3
    probs[flip] = np.roll(probs[flip], 1, axis=1)
    records = [
        LesionRecord(
            lesion_id=f"IL_{i:05d}",
            age=None if i % 11 == 0 else float(5 * rng.integers(1, 18)),
            sex=None if i % 13 == 0 else SEXES[int(rng.integers(2))],
            skin_tone=None if i % 7 == 0 else int(rng.choice(6, p=[0.02, 0.1, 0.3, 0.3, 0.2, 0.08])),
            site=None if i % 17 == 0 else SITES[int(rng.integers(len(SITES)))],
            derm=None,
            clinical=None,
            label=int(labels[i]),
            metadata_csv=Path("meta.csv"),
        )
        for i in range(n)
    ]
    return records, labels, probs


@pytest.fixture(scope="module")
def result():
    records, labels, probs = _data(150, 0)
    return records, labels, probs, subgroup_table(records, labels, probs, NAMES, min_lesions=5, n_boot=50, seed=1)


def test_stratum_metrics_are_isic_metrics_of_the_subset(result):
    records, labels, probs, table = result
    for attribute, block in table["attributes"].items():
        assert block["strata"], attribute
        for stratum in block["strata"]:
            index = np.array([stratum_of(r, attribute) == stratum["value"] for r in records])
            macro = isic_metrics(labels[index], probs[index], NAMES)["macro"]
            assert stratum["n"] == index.sum()
            for metric, value in stratum["metrics"].items():
                assert value == macro[metric] or (np.isnan(value) and np.isnan(macro[metric]))
                assert stratum["gap"][metric] == pytest.approx(value - table["overall"][metric], nan_ok=True)
    assert table["overall"]["dice"] == isic_metrics(labels, probs, NAMES)["macro"]["dice"]


@pytest.mark.parametrize(
    ("attribute", "value", "member"),
    [
        ("sex", "female", lambda r: r.sex == "female"),
        ("sex", "unknown", lambda r: r.sex is None),
        ("skin_tone", "3", lambda r: r.skin_tone == 3),
        ("age_band", "30-44", lambda r: r.age is not None and 30 <= r.age < 45),
        ("age_band", "75+", lambda r: r.age is not None and r.age >= 75),
        ("site", "trunk", lambda r: r.site == "trunk"),
    ],
)
def test_a_stratum_is_isic_metrics_of_the_lesions_chosen_from_the_records(result, attribute, value, member):
    """The subset is chosen here from the record's own fields, not through ``stratum_of``, so a
    getter that reads the wrong field or draws a band edge wrongly fails."""
    records, labels, probs, table = result
    index = np.array([member(r) for r in records])
    assert index.sum() >= 5  # scored, not withheld
    stratum = next(s for s in table["attributes"][attribute]["strata"] if s["value"] == value)
    macro = isic_metrics(labels[index], probs[index], NAMES)["macro"]
    assert stratum["n"] == index.sum()
    for metric, got in stratum["metrics"].items():
        assert got == macro[metric] or (np.isnan(got) and np.isnan(macro[metric])), metric


def test_small_strata_are_withheld_and_named(result):
    records, labels, probs, table = result
    for attribute, block in table["attributes"].items():
        counts = {}
        for r in records:
            counts[stratum_of(r, attribute)] = counts.get(stratum_of(r, attribute), 0) + 1
        assert {w["value"]: w["n"] for w in block["withheld"]} == {v: n for v, n in counts.items() if n < 5}
        assert {s["value"] for s in block["strata"]} == {v for v, n in counts.items() if n >= 5}
    # skin tone 0 is drawn for about 2 % of the lesions, so it is among the withheld here
    assert "0" in {w["value"] for w in table["attributes"]["skin_tone"]["withheld"]}


def test_unknowns_are_a_stratum_and_age_bands_are_ordered(result):
    records, labels, probs, table = result
    assert table["attributes"]["sex"]["strata"][-1]["value"] == "unknown"
    bands = [s["value"] for s in table["attributes"]["age_band"]["strata"]]
    assert bands == [b for b in ["<30", "30-44", "45-59", "60-74", "75+", "unknown"] if b in bands]
    assert [age_band(a) for a in (None, 0, 29.9, 30, 74, 75, 120)] == [
        "unknown",
        "<30",
        "<30",
        "30-44",
        "60-74",
        "75+",
        "75+",
    ]
    with pytest.raises(ValueError, match="attribute"):
        stratum_of(records[0], "height")


def test_intervals_hold_the_point_estimate_and_the_files_are_written(result, tmp_path):
    records, labels, probs, table = result
    for block in table["attributes"].values():
        for s in block["strata"]:
            low, high = s["ci95"]["dice"]
            assert low <= high
    paths = write_subgroups(table, tmp_path)
    document = json.loads(paths["json"].read_text())
    assert document["min_lesions"] == 5 and set(document["attributes"]) == {"sex", "skin_tone", "age_band", "site"}
    text = paths["markdown"].read_text()
    assert "Withheld (fewer than 5 lesions)" in text and "Skin tone" in text
    assert paths["figure"].read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs_are_refused():
    records, labels, probs = _data(20, 0)
    with pytest.raises(ValueError, match="same lesions"):
        subgroup_table(records[:-1], labels, probs, NAMES)
    with pytest.raises(ValueError, match="min_lesions"):
        subgroup_table(records, labels, probs, NAMES, min_lesions=0)


# ------------------------------------------------------------------ bootstrap


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 60), ties=st.booleans(), stratified=st.booleans())
def test_weighted_metrics_equal_isic_metrics_on_each_resample(seed, n, ties, stratified):
    _, labels, probs = _data(n, seed)
    if ties:  # tied scores, where the AUC counts a half
        probs = np.round(probs, 1)
    weights = resample_weights(labels, 6, np.random.default_rng(seed), stratified=stratified)
    assert weights.shape == (6, n) and (weights.sum(axis=1) == n).all()
    if stratified:  # every resample keeps each class's count
        for c in np.unique(labels):
            assert (weights[:, labels == c].sum(axis=1) == (labels == c).sum()).all()
    fast = weighted_macro_metrics(labels, probs, weights, WEIGHTED_METRICS)
    for b in range(6):
        index = np.repeat(np.arange(n), weights[b].astype(int))
        macro = isic_metrics(labels[index], probs[index], NAMES)["macro"]
        expected = [macro[m] for m in WEIGHTED_METRICS]
        assert fast[b] == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True)
    ones = weighted_macro_metrics(labels, probs, np.ones(n), WEIGHTED_METRICS)[0]
    macro = isic_metrics(labels, probs, NAMES)["macro"]
    assert ones == pytest.approx([macro[m] for m in WEIGHTED_METRICS], rel=1e-12, abs=1e-12, nan_ok=True)


def test_bootstrap_ci_is_the_percentile_interval_of_the_replicates():
    _, labels, probs = _data(80, 9)
    weights = resample_weights(labels, 50, np.random.default_rng(4))
    replicates = weighted_macro_metrics(labels, probs, weights, ("dice",))[:, 0]
    assert bootstrap_ci(labels, probs, NAMES, n_boot=50, seed=4)["dice"] == pytest.approx(
        tuple(np.percentile(replicates, [2.5, 97.5]))
    )


def test_bootstrap_is_seeded_and_narrows_with_more_lesions():
    _, labels, probs = _data(400, 3)
    a = bootstrap_ci(labels, probs, NAMES, metrics=("dice", "auc", "ap"), n_boot=20, seed=5)
    assert a == bootstrap_ci(labels, probs, NAMES, metrics=("dice", "auc", "ap"), n_boot=20, seed=5)
    small = bootstrap_ci(labels[:40], probs[:40], NAMES, n_boot=300, seed=5)["dice"]
    large = bootstrap_ci(labels, probs, NAMES, n_boot=300, seed=5)["dice"]
    assert large[1] - large[0] < small[1] - small[0]
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(labels, probs, NAMES, metrics=("dices",), n_boot=2)
