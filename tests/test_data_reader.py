"""Reading MILK10k splits: item and batch format, layouts, policies, logging."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import TINY, edit_csv, make_set, read_rows
from PIL import Image
from torch.utils.data import default_collate

from fusionkit.data import CLASS_NAMES, MODALITIES, Milk10kDataset, find_split, lesion_labels, read_milk10k
from fusionkit.errors import DataError

W, H = TINY


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("milk"), n_lesions=30, seed=1)


def test_item_format(files):
    dataset = Milk10kDataset(files=files)
    assert len(dataset) == 30
    item = dataset[0]
    assert list(item) == ["lesion_id", "derm", "clinical", "meta", "present", "label"]
    assert isinstance(item["lesion_id"], str) and item["lesion_id"].startswith("IL_")
    for key in ("derm", "clinical"):
        assert item[key].shape == (3, H, W) and item[key].dtype == torch.float32
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    assert item["meta"].shape == (dataset.metadata_width,) and item["meta"].dtype == torch.float32
    assert set(item["present"]) == set(MODALITIES)
    for value in item["present"].values():
        assert value.dtype == torch.bool and value.shape == () and bool(value)
    assert isinstance(item["label"], int) and 0 <= item["label"] < len(CLASS_NAMES)


def test_default_collate_gives_the_model_batch(files):
    dataset = Milk10kDataset(files=files)
    batch = default_collate([dataset[i] for i in range(5)])
    assert batch["derm"].shape == (5, 3, H, W) and batch["clinical"].shape == (5, 3, H, W)
    assert batch["meta"].shape == (5, dataset.metadata_width)
    assert all(batch["present"][m].shape == (5,) and batch["present"][m].dtype == torch.bool for m in MODALITIES)
    assert batch["label"].shape == (5,) and batch["label"].dtype == torch.int64
    assert batch["lesion_id"] == list(dataset.lesion_ids[:5])


def test_pairs_images_and_joins_labels(files):
    rows = read_rows(files.metadata_csv)
    truth = {r[0]: r[1:].index("1.0") for r in read_rows(files.ground_truth_csv)[1:]}
    table = read_milk10k(files)
    for lesion in table.lesions:
        assert lesion.label == truth[lesion.lesion_id]
        assert rows[lesion.derm.line - 1][1] == "dermoscopic"
        assert rows[lesion.clinical.line - 1][1] == "clinical: close-up"
        assert rows[lesion.derm.line - 1][0] == lesion.lesion_id == rows[lesion.clinical.line - 1][0]
    # the item's derm image is the decoded dermoscopic file
    dataset = Milk10kDataset(files=files)
    lesion = table.lesions[3]
    decoded = np.array(Image.open(table.image_sources[lesion.derm.isic_id].path).convert("RGB"))
    got = dataset[3]["derm"]
    assert torch.equal((got * 255).round().to(torch.uint8), torch.from_numpy(decoded).permute(2, 0, 1))


def test_labels_and_class_counts(files):
    dataset = Milk10kDataset(files=files)
    ids, labels = lesion_labels(files)
    assert tuple(ids) == dataset.lesion_ids and tuple(labels) == dataset.labels
    counts = dataset.class_counts()
    assert list(counts) == list(CLASS_NAMES) and sum(counts.values()) == 30
    assert all(v >= 1 for v in counts.values())


def test_subset_keeps_the_given_order(files):
    full = Milk10kDataset(files=files)
    chosen = [full.lesion_ids[7], full.lesion_ids[2], full.lesion_ids[19]]
    subset = Milk10kDataset(files=files, lesion_ids=chosen, encoder=full.encoder)
    assert subset.lesion_ids == tuple(chosen)
    assert torch.equal(subset[1]["meta"], full[2]["meta"])
    assert torch.equal(subset[1]["derm"], full[2]["derm"])


def test_doubled_folder_is_accepted(tmp_path):
    files = make_set(tmp_path, n_lesions=12)
    inner = files.image_dir / files.image_dir.name
    inner.mkdir()
    for lesion_dir in [p for p in files.image_dir.iterdir() if p.name.startswith("IL_")]:
        shutil.move(lesion_dir, inner / lesion_dir.name)
    (files.image_dir / "LICENSE.txt").write_text("CC-BY-NC")
    (inner / ".DS_Store").write_bytes(b"\0\1")
    (inner / "._ISIC_0000000.jpg").write_bytes(b"resource fork")
    dataset = Milk10kDataset(root=tmp_path)
    assert len(dataset) == 12 and dataset[0]["derm"].shape == (3, H, W)


def test_unlabelled_test_split(tmp_path):
    make_set(tmp_path, n_lesions=12, split="Test", with_ground_truth=False)
    files = find_split(tmp_path, "Test")
    assert files.ground_truth_csv is None
    assert files.image_dir.name == "MILK10k_Test_Input"
    dataset = Milk10kDataset(files=files)
    assert not dataset.labelled and dataset.labels is None
    item = dataset[0]
    assert "label" not in item
    batch = default_collate([dataset[0], dataset[1]])
    assert "label" not in batch and batch["derm"].shape == (2, 3, H, W)
    with pytest.raises(DataError, match="no ground truth"):
        lesion_labels(files)


def test_missing_image_absent_policy(tmp_path):
    files = make_set(tmp_path, n_lesions=12)
    rows = read_rows(files.metadata_csv)
    missing_file = rows[3]  # lesion 1, clinical image file deleted
    next(files.image_dir.rglob(f"{missing_file[2]}.jpg")).unlink()
    rows = edit_csv(files.metadata_csv, lambda r: r.pop(6))  # lesion 2 loses its dermoscopic row
    lesion_without_row = rows[5][0]
    dataset = Milk10kDataset(files=files, missing_image="absent")
    assert len(dataset) == 12
    a = dataset[dataset.lesion_ids.index(missing_file[0])]
    assert not a["present"]["clinical"] and a["present"]["derm"] and a["present"]["meta"]
    assert a["clinical"].shape == (3, H, W) and not a["clinical"].any()
    b = dataset[dataset.lesion_ids.index(lesion_without_row)]
    assert not b["present"]["derm"] and b["present"]["clinical"]
    assert not b["derm"].any()
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    assert int((~batch["present"]["derm"]).sum()) == 1 and int((~batch["present"]["clinical"]).sum()) == 1


def test_summary_is_logged(files, caplog):
    with caplog.at_level(logging.INFO, logger="fusionkit.data"):
        Milk10kDataset(files=files)
    text = caplog.text
    assert "30 lesions" in text and "30 dermoscopic, 30 clinical" in text
    assert "classes: AKIEC" in text and "missing values: age" in text


def test_stray_images_are_reported(tmp_path, caplog):
    files = make_set(tmp_path, n_lesions=12)
    folder = files.image_dir / "IL_0000001"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "ISIC_0000001.jpg")
    with caplog.at_level(logging.WARNING, logger="fusionkit.data"):
        Milk10kDataset(files=files)
    assert "not listed" in caplog.text and "ISIC_0000001" in caplog.text


def test_argument_errors(files, tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        Milk10kDataset()
    with pytest.raises(ValueError, match="image_size"):
        Milk10kDataset(files=files, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="missing_image"):
        Milk10kDataset(files=files, missing_image="skip")
