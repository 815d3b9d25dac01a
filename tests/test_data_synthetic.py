"""The synthetic MILK10k generator: exact layout, determinism, imbalance, the documented label rule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_set, read_rows
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fusionkit.data import (
    CLASS_NAMES,
    SYNTHETIC_CLINICAL_CLASSES,
    SYNTHETIC_DERM_CLASSES,
    SYNTHETIC_METADATA_CLASSES,
    Milk10kDataset,
    synthetic_class_counts,
)
from fusionkit.data.schema import TRAINING_CLASS_COUNTS
from fusionkit.data.synthetic import SYNTHETIC_SITE_OF_CLASS
from fusionkit.errors import FusionkitError

METADATA_HEADER = (
    "lesion_id,image_type,isic_id,attribution,copyright_license,image_manipulation,age_approx,sex,"
    "skin_tone_class,site,MONET_ulceration_crust,MONET_hair,MONET_vasculature_vessels,MONET_erythema,"
    "MONET_pigmented,MONET_gel_water_drop_fluid_dermoscopy_liquid,MONET_skin_markings_pen_ink_purple_pen"
)
GROUND_TRUTH_HEADER = "lesion_id,AKIEC,BCC,BEN_OTH,BKL,DF,INF,MAL_OTH,MEL,NV,SCCKA,VASC"


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_exact_layout_and_headers(tmp_path):
    files = make_set(tmp_path, n_lesions=20, with_supplement=True)
    assert files.metadata_csv == tmp_path / "MILK10k_Training_Metadata.csv"
    assert files.ground_truth_csv == tmp_path / "MILK10k_Training_GroundTruth.csv"
    assert files.supplement_csv == tmp_path / "MILK10k_Training_Supplement.csv"
    assert files.metadata_csv.read_text().splitlines()[0] == METADATA_HEADER
    assert files.ground_truth_csv.read_text().splitlines()[0] == GROUND_TRUTH_HEADER
    assert files.supplement_csv.read_text().splitlines()[0] == (
        "isic_id,diagnosis_full,diagnosis_confirm_type,invasion_thickness_interval"
    )
    rows = read_rows(files.metadata_csv)[1:]
    assert len(rows) == 40
    lesions = [r[0] for r in rows[::2]]
    assert lesions == sorted(lesions) and len(set(lesions)) == 20
    assert all(r[1] == "clinical: close-up" for r in rows[::2])
    assert all(r[1] == "dermoscopic" for r in rows[1::2])
    assert [r[0] for r in rows[1::2]] == lesions
    for lesion_id, _image_type, isic_id, attribution, license_, manipulation, *rest in rows:
        path = files.image_dir / lesion_id / f"{isic_id}.jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 24)
        assert (attribution, license_) == ("MILK study team", "CC-BY-NC")
        assert manipulation in ("instrument only", "altered")
        assert all(0.0 <= float(x) <= 1.0 for x in rest[4:])
    truth = read_rows(files.ground_truth_csv)[1:]
    assert [r[0] for r in truth] == lesions
    for row in truth:
        assert sorted(row[1:]) == ["0.0"] * 10 + ["1.0"]


def test_reader_round_trip(tmp_path):
    files = make_set(tmp_path, n_lesions=20)
    dataset = Milk10kDataset(files=files)
    truth = {r[0]: r[1:].index("1.0") for r in read_rows(files.ground_truth_csv)[1:]}
    assert dict(zip(dataset.lesion_ids, dataset.labels, strict=True)) == truth


def test_same_seed_gives_byte_identical_files(tmp_path):
    make_set(tmp_path / "a", n_lesions=15, seed=7, with_supplement=True)
    make_set(tmp_path / "b", n_lesions=15, seed=7, with_supplement=True)
    make_set(tmp_path / "c", n_lesions=15, seed=8, with_supplement=True)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


def test_refuses_to_overwrite_unless_asked(tmp_path):
    make_set(tmp_path, n_lesions=12, seed=1)
    with pytest.raises(FusionkitError, match="overwrite=True"):
        make_set(tmp_path, n_lesions=12, seed=2)
    before = _digest(tmp_path)
    make_set(tmp_path, n_lesions=12, seed=2, overwrite=True)
    make_set(tmp_path / "fresh", n_lesions=12, seed=2)
    assert _digest(tmp_path / "fresh") == {k: v for k, v in _digest(tmp_path).items() if not k.startswith("fresh")}
    assert before != _digest(tmp_path / "fresh")


@pytest.mark.parametrize("n", [11, 20, 59, 60, 100, 400])
def test_class_counts_scale_the_real_imbalance(n):
    counts = synthetic_class_counts(n)
    assert sum(counts.values()) == n and list(counts) == list(CLASS_NAMES)
    assert min(counts.values()) >= (2 if n >= 60 else 1)
    if n >= 100:
        assert max(counts, key=counts.get) == "BCC"
        assert counts["BCC"] >= counts["NV"] >= counts["MAL_OTH"]
    uniform = synthetic_class_counts(n, class_balance="uniform")
    assert max(uniform.values()) - min(uniform.values()) <= 1 and sum(uniform.values()) == n


def test_fewer_lesions_than_classes(tmp_path):
    counts = synthetic_class_counts(3)
    assert sum(counts.values()) == 3 and counts["BCC"] == counts["NV"] == counts["BKL"] == 1
    assert sum(synthetic_class_counts(5, class_balance="uniform").values()) == 5
    with pytest.raises(ValueError, match="at least 1"):
        synthetic_class_counts(0)
    files = make_set(tmp_path, n_lesions=2, split="Test", with_ground_truth=False)
    assert len(Milk10kDataset(files=files)) == 2


def test_real_class_counts_constant_matches_the_format_doc():
    assert sum(TRAINING_CLASS_COUNTS.values()) == 5240
    assert synthetic_class_counts(5240) == TRAINING_CLASS_COUNTS


def test_missing_values_and_reserved_sites(tmp_path):
    files = make_set(tmp_path, n_lesions=60, seed=4)
    rows = read_rows(files.metadata_csv)
    header, rows = rows[0], rows[1:]
    age, site = header.index("age_approx"), header.index("site")
    lesions = {r[0]: r for r in rows}
    assert sum(r[age] == "" for r in lesions.values()) >= 1
    assert sum(r[site] == "" for r in lesions.values()) >= 1
    assert all(r[age] == "" or int(r[age]) in range(5, 90, 5) for r in rows)
    truth = {r[0]: CLASS_NAMES[r[1:].index("1.0")] for r in read_rows(files.ground_truth_csv)[1:]}
    for lesion_id, row in lesions.items():
        name = truth[lesion_id]
        if name in SYNTHETIC_METADATA_CLASSES:
            assert row[site] == SYNTHETIC_SITE_OF_CLASS[name]
        else:
            assert row[site] not in SYNTHETIC_SITE_OF_CLASS.values()


def test_classes_partition_over_modalities():
    groups = (SYNTHETIC_DERM_CLASSES, SYNTHETIC_CLINICAL_CLASSES, SYNTHETIC_METADATA_CLASSES)
    assert sorted(c for g in groups for c in g) == sorted(CLASS_NAMES)


def _centre(image):
    h, w = image.shape[1:]
    return image[:, h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1].mean((1, 2)).numpy()


def test_trimodal_beats_every_unimodal_model(tmp_path):
    """The documented rule: each modality reveals only its own classes; together they reveal all."""
    files = make_set(tmp_path, n_lesions=330, seed=5, class_balance="uniform")
    dataset = Milk10kDataset(files=files)
    features = {"derm": [], "clinical": [], "meta": []}
    for i in range(len(dataset)):
        item = dataset[i]
        features["derm"].append(_centre(item["derm"]))
        features["clinical"].append(_centre(item["clinical"]))
        features["meta"].append(item["meta"].numpy())
    features = {k: np.stack(v) for k, v in features.items()}
    y = np.asarray(dataset.labels)
    half = len(y) // 2

    def score(modalities):
        x = np.concatenate([features[m] for m in modalities], axis=1)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=10, max_iter=3000))
        model.fit(x[:half], y[:half])
        return f1_score(y[half:], model.predict(x[half:]), average="macro")

    trimodal = score(["derm", "clinical", "meta"])
    unimodal = {m: score([m]) for m in ("derm", "clinical", "meta")}
    assert trimodal >= 0.95
    for modality, value in unimodal.items():
        assert value <= 0.6, (modality, value)
        assert trimodal - value >= 0.35
