"""Robustness per modality (issue 24): the corruptions, the predictor seam, the table and its files.

Every image corruption is checked over seeds, severities, sizes, layouts and array types with
Hypothesis (uint8 in, uint8 of the same shape and type out, the same output for the same seed,
the input untouched); the graded ones whose effect has an obvious size are checked to grow with
the severity. The runner is checked on a small "derm-only" model (nearest colour prototype of the
dermoscopic image): corrupting the clinical photo or the metadata leaves every metric unchanged to
the last digit, corrupting the dermoscopic photo at severity 5 lowers the Dice.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionkit.data.schema import SEXES, SITES
from fusionkit.data.tables import ImageRecord, LesionRecord
from fusionkit.errors import ConfigError, DataError
from fusionkit.evaluate.robustness import (
    ABSENT,
    CORRUPTIONS,
    SEVERITIES,
    Perturbation,
    array_predictor,
    corruption_rng,
    corruptions_for,
    load_robustness,
    mean_corruption_error,
    robustness_table,
    write_robustness,
)
from fusionkit.evaluate.robustness.images import NOISE_STD, as_chw
from fusionkit.evaluate.trust import robustness_section
from fusionkit.metrics import isic_metrics
from fusionkit.metrics.bootstrap import bootstrap_ci, resample_weights, weighted_macro_metrics

IMAGE_CORRUPTIONS = [n for n, c in CORRUPTIONS.items() if c.kind == "image"]
META_CORRUPTIONS = [n for n, c in CORRUPTIONS.items() if c.kind == "meta"]


def _image(seed: int, h: int, w: int) -> np.ndarray:
    """A smooth gradient with texture (HWC uint8), so blur and JPEG have something to change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([80 + 100 * yy / h, 60 + 120 * xx / w, 120 + 40 * np.sin(xx / 3.0)], axis=-1)
    return np.clip(base + rng.normal(0, 10, size=base.shape), 0, 255).astype(np.uint8)


def _record(lesion_id: str, **fields) -> LesionRecord:
    image = ImageRecord(
        isic_id=f"ISIC_{lesion_id}", image_type="dermoscopic", manipulation="instrument only", monet=(0.5,) * 7, line=2
    )
    values = {"age": 50.0, "sex": "male", "skin_tone": 3, "site": "trunk"} | fields
    return LesionRecord(
        lesion_id=lesion_id, derm=image, clinical=None, label=0, metadata_csv=Path("meta.csv"), **values
    )


# ------------------------------------------------------------------ image corruptions


@pytest.mark.parametrize("name", IMAGE_CORRUPTIONS)
@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    severity=st.sampled_from(SEVERITIES),
    h=st.integers(1, 72),
    w=st.integers(1, 72),
    layout=st.sampled_from(["hwc", "chw"]),
    as_tensor=st.booleans(),
)
def test_image_corruption_is_seeded_uint8_and_keeps_the_size(name, seed, severity, h, w, layout, as_tensor):
    if layout == "chw" and w == 3:
        w = 4  # (3, H, 3) is read as channels-last (documented in as_chw)
    image = _image(seed % 1000, h, w)
    if layout == "chw":
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
    image = torch.from_numpy(image) if as_tensor else image
    before = image.clone() if as_tensor else image.copy()
    fn = CORRUPTIONS[name].fn
    first = fn(image, severity, np.random.default_rng(seed))
    second = fn(image, severity, np.random.default_rng(seed))
    assert type(first) is type(image)
    assert tuple(first.shape) == tuple(image.shape)
    assert first.dtype == (torch.uint8 if as_tensor else np.uint8)
    assert (np.asarray(first) == np.asarray(second)).all()
    assert (np.asarray(image) == np.asarray(before)).all(), "the input image was changed in place"


@pytest.mark.parametrize("name", IMAGE_CORRUPTIONS)
def test_both_layouts_give_the_same_pixels(name):
    image = _image(1, 40, 56)
    hwc = CORRUPTIONS[name].fn(image, 4, np.random.default_rng(7))
    chw = CORRUPTIONS[name].fn(np.ascontiguousarray(image.transpose(2, 0, 1)), 4, np.random.default_rng(7))
    assert (hwc == chw.transpose(1, 2, 0)).all()


@pytest.mark.parametrize("name", IMAGE_CORRUPTIONS)
def test_every_image_corruption_changes_the_image_at_severity_5(name):
    image = _image(2, 64, 64)
    out = CORRUPTIONS[name].fn(image, 5, np.random.default_rng(0))
    assert np.abs(out.astype(int) - image).mean() > 1.0


@pytest.mark.parametrize(
    ("name", "measure", "direction"),
    [
        ("gaussian_noise", lambda x, ref: np.abs(x.astype(float) - ref).mean(), "up"),
        ("brightness", lambda x, ref: x.astype(float).mean(), "up"),
        ("contrast", lambda x, ref: x.astype(float).std(), "down"),
        ("colour_cast", lambda x, ref: np.abs(x.astype(float).mean((0, 1)) - ref.mean((0, 1))).max(), "up"),
        ("gaussian_blur", lambda x, ref: np.abs(np.diff(x.astype(float), axis=1)).mean(), "down"),
        ("vignette", lambda x, ref: np.all(x == 0, axis=-1).sum(), "up"),
        ("hair", lambda x, ref: np.any(x != ref, axis=-1).sum(), "up"),
        ("ruler_text", lambda x, ref: np.any(x != ref, axis=-1).sum(), "up"),
    ],
)
@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1))
def test_severity_is_monotone(name, measure, direction, seed):
    image = _image(seed % 97, 96, 96)
    values = [measure(CORRUPTIONS[name].fn(image, s, np.random.default_rng(seed)), image) for s in SEVERITIES]
    pairs = list(zip(values, values[1:], strict=False))
    if direction == "up":
        assert all(a <= b + 1e-9 for a, b in pairs), values
    else:
        assert all(a >= b - 1e-9 for a, b in pairs), values


def test_noise_std_matches_the_table():
    image = np.full((128, 128, 3), 128, dtype=np.uint8)
    for severity, std in zip(SEVERITIES[:3], NOISE_STD[:3], strict=True):  # 128 +- 3 std stays in 0..255
        out = CORRUPTIONS["gaussian_noise"].fn(image, severity, np.random.default_rng(severity))
        measured = (out.astype(float) - 128).std()
        assert measured == pytest.approx(std * 255, rel=0.05)


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), [[1]]]
)
def test_bad_images_are_refused(bad):
    with pytest.raises(ValueError, match="image"):
        as_chw(bad)


@pytest.mark.parametrize("severity", [0, 6, 2.5, True])
def test_bad_severities_are_refused(severity):
    with pytest.raises(ValueError, match="severity"):
        CORRUPTIONS["gaussian_noise"].fn(_image(0, 8, 8), severity, np.random.default_rng(0))


# ------------------------------------------------------------------ metadata corruptions


@pytest.mark.parametrize("name", META_CORRUPTIONS)
@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), severity=st.sampled_from(SEVERITIES))
def test_metadata_corruption_is_seeded_and_leaves_the_record(name, seed, severity):
    record = _record("IL_1", sex="female", site="hand", age=35.0)
    first = CORRUPTIONS[name].fn(record, severity, np.random.default_rng(seed))
    second = CORRUPTIONS[name].fn(record, severity, np.random.default_rng(seed))
    assert first == second
    assert isinstance(first, LesionRecord)
    assert record == _record("IL_1", sex="female", site="hand", age=35.0)
    changed = {f for f in ("age", "sex", "site", "skin_tone") if getattr(first, f) != getattr(record, f)}
    changed |= {"monet"} if first.derm != record.derm or first.clinical != record.clinical else set()
    assert changed <= {name.removeprefix("missing_").removeprefix("wrong_").removesuffix("_noise")}


def test_metadata_corruptions_at_severity_5_hit_every_lesion():
    records = [
        _record(f"IL_{i}", sex=SEXES[i % 2], site=SITES[i % len(SITES)], age=float(5 * (i % 17))) for i in range(40)
    ]
    for field in ("age", "sex", "site", "skin_tone"):
        p = Perturbation(modality="meta", corruption=f"missing_{field}", severity=5, seed=3)
        assert all(getattr(p.record(r), field) is None for r in records)
    p = Perturbation(modality="meta", corruption="missing_monet", severity=5, seed=3)
    assert all(p.record(r).derm.monet == () and p.record(r).derm.isic_id == r.derm.isic_id for r in records)
    for field in ("sex", "site"):
        p = Perturbation(modality="meta", corruption=f"wrong_{field}", severity=5, seed=3)
        assert all(getattr(p.record(r), field) != getattr(r, field) for r in records)
        assert all(getattr(p.record(r), field) in (SEXES if field == "sex" else SITES) for r in records)


def test_missing_monet_is_encoded_as_the_training_mean():
    from fusionkit.data.metadata import MetadataEncoder

    records = [_record(f"IL_{i}", age=float(5 * i)) for i in range(6)]
    records = [
        replace(r, derm=replace(r.derm, monet=tuple(0.1 * i + 0.05 * c for c in range(7))))
        for i, r in enumerate(records)
    ]
    encoder = MetadataEncoder().fit(records)
    names = list(encoder.feature_names)
    monet = [i for i, n in enumerate(names) if n.startswith("derm.")]
    hit = Perturbation(modality="meta", corruption="missing_monet", severity=5, seed=0).record(records[4])
    clean, missing = encoder.transform_one(records[4]), encoder.transform_one(hit)
    assert torch.all(missing[monet] == 0.0) and not torch.all(clean[monet] == 0.0)
    others = [i for i in range(len(names)) if i not in monet]
    assert torch.equal(missing[others], clean[others])  # age, sex, site, skin tone and the altered flags kept
    refit = MetadataEncoder().fit([*records, hit])  # a record without scores adds nothing to the statistics
    assert refit.monet_mean == encoder.monet_mean


def test_lesions_hit_at_a_severity_are_hit_at_every_higher_one():
    records = [_record(f"IL_{i}") for i in range(200)]
    hit = []
    for severity in SEVERITIES:
        p = Perturbation(modality="meta", corruption="missing_site", severity=severity, seed=11)
        hit.append({r.lesion_id for r in records if p.record(r).site is None})
    assert all(a <= b for a, b in zip(hit, hit[1:], strict=False))
    assert 0 < len(hit[0]) < len(hit[2]) < len(hit[4]) == 200


def test_age_noise_grows_with_the_severity_and_stays_on_the_grid():
    records = [_record(f"IL_{i}", age=50.0) for i in range(100)]
    errors = []
    for severity in SEVERITIES:
        p = Perturbation(modality="meta", corruption="age_noise", severity=severity, seed=0)
        ages = np.array([p.record(r).age for r in records])
        assert np.all(ages % 5 == 0) and np.all((ages >= 0) & (ages <= 120))
        errors.append(np.abs(ages - 50.0))
    assert all(np.all(a <= b) for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1].mean() > errors[0].mean()
    assert Perturbation(modality="meta", corruption="age_noise", severity=5).record(_record("x", age=None)).age is None


# ------------------------------------------------------------------ catalog and perturbations


def test_every_corruption_applies_to_the_modalities_of_its_kind():
    assert corruptions_for("derm") == corruptions_for("clinical") == [*IMAGE_CORRUPTIONS, ABSENT]
    assert corruptions_for("meta") == [*META_CORRUPTIONS, ABSENT]
    assert len(IMAGE_CORRUPTIONS) >= 11 and len(META_CORRUPTIONS) >= 7
    with pytest.raises(ValueError, match="unknown corruption"):
        corruptions_for("derm", ["fog"])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"modality": "meta", "corruption": "hair", "severity": 1}, "does not apply"),
        ({"modality": "derm", "corruption": "wrong_sex", "severity": 1}, "does not apply"),
        ({"modality": "derm", "corruption": "absent", "severity": 1}, "no severity"),
        ({"modality": "derm", "corruption": "hair", "severity": None}, "severity"),
        ({"modality": "derm", "corruption": "fog", "severity": 1}, "unknown corruption"),
    ],
)
def test_bad_perturbations_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        Perturbation(**fields)


def test_a_perturbation_touches_only_its_own_modality():
    image = _image(0, 32, 32)
    record = _record("IL_7")
    p = Perturbation(modality="derm", corruption="hair", severity=5, seed=1)
    assert p.image("clinical", image, "IL_7") is image
    assert p.record(record) is record
    assert not (p.image("derm", image, "IL_7") == image).all()
    assert Perturbation(modality="clinical", corruption=ABSENT, severity=None).absent == ("clinical",)
    assert p.absent == ()
    assert p.label == "derm/hair@5"


def test_the_generator_depends_on_the_lesion_not_on_order():
    a = corruption_rng(5, "hair", "derm", "IL_1").random(4)
    assert (a == corruption_rng(5, "hair", "derm", "IL_1").random(4)).all()
    for other in [
        (6, "hair", "derm", "IL_1"),
        (5, "ink_marks", "derm", "IL_1"),
        (5, "hair", "clinical", "IL_1"),
        (5, "hair", "derm", "IL_2"),
    ]:
        assert not (a == corruption_rng(*other).random(4)).all()


# ------------------------------------------------------------------ the runner on a derm-only model

CLASSES = ("red", "green", "blue")
PROTOTYPES = np.array([[200.0, 60.0, 60.0], [60.0, 200.0, 60.0], [60.0, 60.0, 200.0]])


def _lesions(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    derm, clinical, records = [], [], []
    for i, label in enumerate(labels):
        colour = PROTOTYPES[label] + rng.normal(0, 25, size=3)
        derm.append(np.clip(colour + rng.normal(0, 15, size=(24, 24, 3)), 0, 255).astype(np.uint8))
        clinical.append(rng.integers(0, 256, size=(3, 20, 28), dtype=np.uint8))
        records.append(_record(f"IL_{i:04d}", sex=SEXES[i % 2], site=SITES[i % 7], age=float(5 * (i % 18))))
    return labels, derm, clinical, records


def derm_only_model(derm, clinical, records, absent):
    """Softmax over the negative distances of the dermoscopic image's mean colour to 3 prototypes."""
    if "derm" in absent:
        return np.full((len(derm), 3), 1 / 3)
    means = np.stack([np.asarray(x, dtype=float).reshape(-1, 3).mean(0) for x in derm])
    logits = -np.linalg.norm(means[:, None, :] - PROTOTYPES[None], axis=-1) / 20.0
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def derm_only_table():
    labels, derm, clinical, records = _lesions()
    predict = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)
    names = ["gaussian_noise", "contrast", "hair", "colour_cast", "wrong_sex", "missing_age", ABSENT]
    return labels, robustness_table(predict, labels, CLASSES, corruptions=names, seed=4, n_boot=200)


def test_corrupting_what_a_derm_only_model_ignores_changes_nothing(derm_only_table):
    labels, table = derm_only_table
    for row in table.results:
        if row["modality"] in ("clinical", "meta"):
            assert row["metrics"] == table.baseline, row
            assert row["relative_drop"] == 0.0
            assert row["dice_ci95"] == list(table.baseline_dice_ci95)


def test_corrupting_the_dermoscopic_photo_at_severity_5_hurts(derm_only_table):
    labels, table = derm_only_table
    assert table.baseline["dice"] > 0.6
    assert table.result("derm", "contrast", 5)["metrics"]["dice"] < table.baseline["dice"]
    assert table.result("derm", "contrast", 5)["relative_drop"] > 0.2
    assert table.result("derm", ABSENT, None)["metrics"]["dice"] < table.baseline["dice"]
    summary = table.summary()
    assert summary["derm"]["mean_relative_drop"] > summary["clinical"]["mean_relative_drop"] == 0.0


def test_table_metrics_are_isic_metrics_of_the_predictor(derm_only_table):
    labels, table = derm_only_table
    _, derm, clinical, records = _lesions()
    predict = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)
    probs = predict(Perturbation(modality="derm", corruption="hair", severity=3, seed=4))
    macro = isic_metrics(labels, probs, CLASSES)["macro"]
    row = table.result("derm", "hair", 3)
    assert row["metrics"] == {k: macro[k] for k in row["metrics"]}
    assert row["dice_ci95"][0] <= row["metrics"]["dice"] <= row["dice_ci95"][1]
    assert row["relative_drop"] == pytest.approx((table.baseline["dice"] - macro["dice"]) / table.baseline["dice"])


def test_row_intervals_are_bootstrap_ci_of_the_corrupted_posteriors(derm_only_table):
    labels, table = derm_only_table
    _, derm, clinical, records = _lesions()
    predict = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)
    for label in [("derm", "hair", 3), ("derm", ABSENT, None), ("meta", "wrong_sex", 5)]:
        severity = label[2]
        probs = predict(Perturbation(modality=label[0], corruption=label[1], severity=severity, seed=4))
        ci = bootstrap_ci(labels, probs, CLASSES, metrics=("dice",), n_boot=200, seed=4)["dice"]
        assert table.result(*label)["dice_ci95"] == list(ci)
    assert table.baseline_dice_ci95 == bootstrap_ci(labels, predict(None), CLASSES, n_boot=200, seed=4)["dice"]


def test_the_modality_whose_corruption_hurts_most_is_named_with_an_interval(derm_only_table):
    labels, table = derm_only_table
    summary = table.summary()
    derm, clinical, meta = summary["derm"], summary["clinical"], summary["meta"]
    lo, hi = derm["mean_relative_drop_ci95"]
    assert 0.0 < lo <= derm["mean_relative_drop"] <= hi  # every resample sees the derm corruptions hurt
    assert clinical["mean_relative_drop_ci95"] == meta["mean_relative_drop_ci95"] == [0.0, 0.0]
    assert derm["hurts_most_share"] == 1.0 and clinical["hurts_most_share"] == meta["hurts_most_share"] == 0.0
    assert derm["absent_relative_drop_ci95"][0] > 0.0
    assert derm["absent_relative_drop"] == table.result("derm", ABSENT, None)["relative_drop"]


def test_drop_intervals_are_the_paired_resamples_of_the_relative_drops():
    """Two modalities with one corruption each: the interval is the percentile interval of the
    per-resample relative drops computed by hand from the same stratified resamples."""
    labels, derm, clinical, records = _lesions(45, seed=2)
    predict = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)
    table = robustness_table(predict, labels, CLASSES, corruptions=["contrast"], severities=(5,), seed=7, n_boot=300)
    weights = resample_weights(labels, 300, np.random.default_rng(7), stratified=True)
    clean = weighted_macro_metrics(labels, predict(None), weights, ("dice",))[:, 0]
    hit = weighted_macro_metrics(
        labels, predict(Perturbation(modality="derm", corruption="contrast", severity=5, seed=7)), weights, ("dice",)
    )[:, 0]
    expected = np.percentile((clean - hit) / clean, [2.5, 97.5])
    assert table.summary()["derm"]["mean_relative_drop_ci95"] == pytest.approx(list(expected), abs=1e-12)


def test_the_table_does_not_depend_on_lesion_order():
    labels, derm, clinical, records = _lesions(30)
    order = np.random.default_rng(0).permutation(30)
    p = Perturbation(modality="derm", corruption="ink_marks", severity=5, seed=9)
    straight = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)(p)
    shuffled = array_predictor(
        derm_only_model,
        derm=[derm[i] for i in order],
        clinical=[clinical[i] for i in order],
        records=[records[i] for i in order],
    )(p)
    assert (straight[order] == shuffled).all()


def test_mce_against_itself_is_one_and_against_a_worse_run_below_one(derm_only_table):
    labels, table = derm_only_table
    own = mean_corruption_error(table, table)
    assert own["mce"] == pytest.approx(1.0)
    assert all(v["mce"] == pytest.approx(1.0) for v in own["per_modality"].values())
    worse_rows = tuple(
        {**r, "metrics": {**r["metrics"], "dice": r["metrics"]["dice"] / 2}} if r["corruption"] != ABSENT else r
        for r in table.results
    )
    worse = replace(table, results=worse_rows)
    result = mean_corruption_error(table, worse)
    assert result["mce"] < 1.0
    assert result["per_corruption"]["derm/contrast"]["ce"] == pytest.approx(
        sum(1 - table.result("derm", "contrast", s)["metrics"]["dice"] for s in SEVERITIES)
        / sum(1 - table.result("derm", "contrast", s)["metrics"]["dice"] / 2 for s in SEVERITIES)
    )
    assert "derm/absent" not in result["per_corruption"]


def test_the_files_are_written_and_read_back(derm_only_table, tmp_path):
    labels, table = derm_only_table
    table = replace(table, mce=mean_corruption_error(table, table))
    paths = write_robustness(table, tmp_path / "report")
    document = json.loads(paths["json"].read_text())
    assert set(document) >= {"baseline", "results", "summary", "mce"}
    row = document["results"][0]
    assert set(row) >= {"modality", "corruption", "severity", "metrics", "dice_ci95", "relative_drop"}
    assert set(row["metrics"]) >= {"dice", "auc", "accuracy"}
    assert any(r["severity"] is None for r in document["results"])
    text = paths["markdown"].read_text()
    assert "dermoscopic photo" in text and "hurts most" in text and "Mean corruption error" in text
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = load_robustness(paths["json"])
    assert back.results == table.results or all(
        a["metrics"] == b["metrics"] or any(math.isnan(v) for v in a["metrics"].values())
        for a, b in zip(back.results, table.results, strict=True)
    )
    assert back.baseline == table.baseline
    assert (
        back.drop_intervals["derm"]["mean_relative_drop_ci95"]
        == table.drop_intervals["derm"]["mean_relative_drop_ci95"]
    )
    assert "hurts most in" in text and "of resamples" in text


def test_a_bad_reference_file_is_named(tmp_path):
    path = tmp_path / "robustness.json"
    path.write_text('{"results": 3}')
    with pytest.raises(DataError, match=r"robustness\.json: not a robustness.json document"):
        load_robustness(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="robustness.json"):
        load_robustness(path)
    with pytest.raises(DataError, match="no such file"):
        load_robustness(tmp_path / "missing.json")


def test_an_incomparable_reference_is_refused(derm_only_table):
    labels, table = derm_only_table
    with pytest.raises(ConfigError, match="same lesions with the same seed"):
        mean_corruption_error(table, replace(table, seed=table.seed + 1))
    with pytest.raises(ConfigError, match="same lesions"):
        mean_corruption_error(table, replace(table, n_lesions=table.n_lesions - 1))


def _docs_script():
    """``docs/scripts/make_robustness_figures.py`` as a module."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "docs" / "scripts" / "make_robustness_figures.py"
    spec = importlib.util.spec_from_file_location("make_robustness_figures", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_of_the_how_to_is_drawn(tmp_path):
    module = _docs_script()
    lesion_id, image = module.sample_image(64)
    assert image.shape == (3, 64, 64) and image.dtype == np.uint8 and lesion_id.startswith("IL_")
    assert module.draw_gallery(tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ PerturbedDataset on a real split


@pytest.fixture(scope="module")
def uint8_dataset(tmp_path_factory):
    from fusionkit.data import Milk10kDataset, build_transforms
    from fusionkit.data.synthetic import make_synthetic_milk10k

    files = make_synthetic_milk10k(tmp_path_factory.mktemp("milk"), n_lesions=12, photo_size=(40, 30), seed=1)
    transform = build_transforms(model_name="test_efficientnet", image_size=32, train=False, normalize=False)
    return Milk10kDataset(files=files, transform=transform, image_size=32)


def test_perturbed_dataset_changes_only_the_perturbed_modality(uint8_dataset):
    from fusionkit.evaluate.robustness import PerturbedDataset

    base = uint8_dataset
    derm = PerturbedDataset(base, Perturbation(modality="derm", corruption="gaussian_noise", severity=5, seed=2))
    meta = PerturbedDataset(base, Perturbation(modality="meta", corruption="wrong_site", severity=5, seed=2))
    absent = PerturbedDataset(base, Perturbation(modality="clinical", corruption=ABSENT, severity=None))
    assert len(derm) == len(base) and derm.lesion_ids == base.lesion_ids and derm.transform is base.transform
    for i in range(len(base)):
        clean = base[i]
        a, m, z = derm[i], meta[i], absent[i]
        assert a["derm"].dtype == torch.uint8 and a["derm"].shape == clean["derm"].shape
        assert not torch.equal(a["derm"], clean["derm"])
        assert torch.equal(a["clinical"], clean["clinical"]) and torch.equal(a["meta"], clean["meta"])
        assert torch.equal(m["derm"], clean["derm"]) and not torch.equal(m["meta"], clean["meta"])
        expected = base.encoder.transform_one(meta.perturbation.record(base.records[i]))
        assert torch.equal(m["meta"], expected)
        assert all(torch.equal(z[k], clean[k]) for k in ("derm", "clinical", "meta"))  # absent is the predictor's job
    # deterministic: a second view gives the same items
    again = PerturbedDataset(base, Perturbation(modality="derm", corruption="gaussian_noise", severity=5, seed=2))
    assert torch.equal(again[3]["derm"], derm[3]["derm"])


def test_perturbed_dataset_refuses_normalised_images(uint8_dataset):
    from fusionkit.data import Milk10kDataset
    from fusionkit.evaluate.robustness import PerturbedDataset

    floats = Milk10kDataset(files=uint8_dataset.files, encoder=uint8_dataset.encoder, image_size=32)
    view = PerturbedDataset(floats, Perturbation(modality="derm", corruption="hair", severity=1))
    with pytest.raises(ValueError, match="normalize=False"):
        view[0]


def test_a_corruption_for_no_requested_modality_is_refused():
    labels, derm, clinical, records = _lesions(6)
    predict = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)
    with pytest.raises(ValueError, match="hair apply to none of the modalities meta"):
        robustness_table(predict, labels, CLASSES, modalities=("meta",), corruptions=["hair", "wrong_sex"])
    with pytest.raises(ValueError, match="unknown corruption"):
        robustness_table(predict, labels, CLASSES, corruptions=["fog"])


def test_given_clean_posteriors_are_used_instead_of_a_clean_pass():
    labels, derm, clinical, records = _lesions(9)
    calls = []
    inner = array_predictor(derm_only_model, derm=derm, clinical=clinical, records=records)

    def predict(p):
        calls.append(p)
        return inner(p)

    clean = inner(None)
    table = robustness_table(
        predict,
        labels,
        CLASSES,
        modalities=("meta",),
        corruptions=["wrong_site"],
        severities=(5,),
        clean_probs=clean,
        n_boot=10,
    )
    assert calls == [Perturbation(modality="meta", corruption="wrong_site", severity=5, seed=0)]
    assert table.baseline == {
        k: v for k, v in isic_metrics(labels, clean, CLASSES)["macro"].items() if k in table.baseline
    }


def test_the_report_section_names_the_modality_that_hurts_most_with_its_interval(derm_only_table, tmp_path):
    labels, table = derm_only_table
    write_robustness(table, tmp_path)
    section = robustness_section(tmp_path)
    derm = table.summary()["derm"]
    lo, hi = derm["mean_relative_drop_ci95"]
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and "modality" not in line and not set(line) <= set("|-: ")  # not the separator
    ]
    assert rows[0].startswith("| derm |")  # ranked by the mean relative drop, largest first
    assert f"{derm['mean_relative_drop']:.3f} [{lo:.3f}, {hi:.3f}]" in rows[0]
    assert "The corruption of `derm` hurts most" in section and "100 % of the bootstrap resamples" in section
    assert robustness_section(tmp_path / "nothing-here") == ""


class _RecordingPipe:
    """A stand-in for a FusionPipeline: records what ``predict_dataset`` is asked for and answers
    the derm-only prototype model, masked out as the real predictor masks through ``absent``."""

    modalities = ("derm", "clinical", "meta")
    class_names = CLASSES

    def __init__(self, labels, derm):
        self.labels, self.derm, self.calls = labels, derm, []

    def predict_dataset(self, dataset, *, absent=(), desc="", **_):
        from fusionkit.runtime.predict import Predictions

        self.calls.append((tuple(absent), desc))
        probs = derm_only_model(self.derm, [None] * len(self.derm), [None] * len(self.derm), tuple(absent))
        ids = [f"IL_{i:04d}" for i in range(len(self.labels))]
        return Predictions(lesion_ids=ids, probs=probs, log_probs=np.log(probs), labels=self.labels)


def test_pipeline_robustness_masks_an_absent_modality_through_the_predictor():
    """``absent`` reaches ``predict_dataset(absent=...)`` (a formatting slip once turned it into a
    comment, and every ``absent`` row read as the clean set): the derm row falls to chance."""
    from fusionkit.evaluate.robustness import pipeline_robustness

    labels, derm, _, _ = _lesions(30)
    pipe = _RecordingPipe(labels, derm)
    table = pipeline_robustness(pipe, dataset=[None] * 30, corruptions=[ABSENT], n_boot=20)  # type: ignore[arg-type]
    assert [c[0] for c in pipe.calls] == [(), ("derm",), ("clinical",), ("meta",)]
    assert pipe.calls[1][1] == "robustness: derm/absent"
    assert table.result("derm", ABSENT, None)["relative_drop"] > 0.5
    assert table.result("clinical", ABSENT, None)["metrics"] == table.baseline


def test_the_how_to_copies_a_scored_runs_figures(tmp_path):
    module = _docs_script()
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(SystemExit, match="no robustness.png, subgroups.png, risk_coverage.png"):
        module.copy_run_figures(run, tmp_path / "out")
    for i, name in enumerate(module.RUN_FIGURES):
        (run / name).write_bytes(b"\x89PNG" + bytes([i]))
    copied = module.copy_run_figures(run, tmp_path / "out")
    assert [p.name for p in copied] == list(module.RUN_FIGURES.values())
    assert [p.read_bytes() for p in copied] == [(run / n).read_bytes() for n in module.RUN_FIGURES]


def test_a_report_written_before_the_robustness_gains_its_section_once(derm_only_table, tmp_path):
    from fusionkit.evaluate.trust import refresh_robustness_section

    labels, table = derm_only_table
    report = tmp_path / "report.md"
    report.write_text("# fusionkit report\n\n## Knowing when to refer\n\ntext\n\n## Figures\n\n![x](x.png)\n")
    assert not refresh_robustness_section(tmp_path)  # no robustness.json yet: the report is left alone
    write_robustness(table, tmp_path)
    assert refresh_robustness_section(tmp_path)
    assert refresh_robustness_section(tmp_path)  # a second pass replaces the section, never repeats it
    text = report.read_text()
    assert text.count("## Robustness per modality") == 1
    assert text.index("## Knowing when to refer") < text.index("## Robustness per modality") < text.index("## Figures")
    assert robustness_section(tmp_path) in text and text.endswith("![x](x.png)\n")
    assert not refresh_robustness_section(tmp_path / "nowhere")
