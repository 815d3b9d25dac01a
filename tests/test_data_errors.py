"""Every kind of bad MILK10k input raises a DataError naming the file, the line and the lesion."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from data_fixtures import edit_csv, make_set, read_rows

from fusionkit.data import Milk10kDataset, find_split
from fusionkit.errors import DataError, FusionkitError


@pytest.fixture
def files(tmp_path: Path):
    return make_set(tmp_path / "milk", n_lesions=24, seed=3)


def _assert_names(error: DataError, path: Path, line: int | None, lesion: str | None) -> None:
    text = str(error)
    assert str(path) in text
    assert error.path == path
    if line is not None:
        assert f"line {line}" in text and error.row == line
    if lesion is not None:
        assert f"lesion {lesion}" in text and error.lesion_id == lesion
    assert "expected" in text


def test_data_error_is_a_fusionkit_error():
    assert issubclass(DataError, FusionkitError)


def test_not_milk10k_layout(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not in the MILK10k layout") as info:
        find_split(tmp_path, "Training")
    assert "MILK10k_Training_Metadata.csv" in str(info.value) and "notes.txt" in str(info.value)
    with pytest.raises(DataError, match="not a folder"):
        find_split(tmp_path / "absent", "Training")
    with pytest.raises(DataError, match="unknown split"):
        find_split(tmp_path, "Validation")


def test_missing_image_file(files):
    rows = read_rows(files.metadata_csv)
    lesion, isic = rows[5][0], rows[5][2]
    next(files.image_dir.rglob(f"{isic}.jpg")).unlink()
    with pytest.raises(DataError, match="not found") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 6, lesion)
    assert f"{isic}.jpg" in str(info.value) and "missing_image='absent'" in str(info.value)


def test_lesion_with_one_image_row(files):
    rows = edit_csv(files.metadata_csv, lambda rows: rows.pop(4))  # a dermoscopic row
    lesion = rows[3][0]
    assert rows[3][1] == "clinical: close-up"
    with pytest.raises(DataError, match="no 'dermoscopic' row") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 4, lesion)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_jpeg(files, damage):
    rows = read_rows(files.metadata_csv)
    lesion, isic = rows[7][0], rows[7][2]
    path = next(files.image_dir.rglob(f"{isic}.jpg"))
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    dataset = Milk10kDataset(files=files)
    index = dataset.lesion_ids.index(lesion)
    with pytest.raises(DataError, match="cannot decode") as info:
        dataset[index]
    _assert_names(info.value, path, None, lesion)
    assert "line 8 of MILK10k_Training_Metadata.csv" in str(info.value)


def test_corrupt_jpeg_fails_the_cache_build(files, tmp_path):
    rows = read_rows(files.metadata_csv)
    path = next(files.image_dir.rglob(f"{rows[2][2]}.jpg"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot decode") as info:
        Milk10kDataset(files=files, image_size=16, cache_dir=tmp_path / "cache")
    _assert_names(info.value, path, None, rows[2][0])
    assert not list((tmp_path / "cache").glob("*.npy")), "no half-built cache left behind"


def test_metadata_missing_column(files):
    edit_csv(files.metadata_csv, lambda rows: [r.pop(7) for r in rows])  # sex
    with pytest.raises(DataError, match="missing column\\(s\\) sex") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 1, None)


def test_metadata_unexpected_header(files):
    def rename(rows):
        rows[0][9] = "anatom_site_general"

    edit_csv(files.metadata_csv, rename)
    with pytest.raises(DataError, match="unexpected column\\(s\\) 'anatom_site_general'") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 1, None)


def test_metadata_row_with_wrong_field_count(files):
    rows = edit_csv(files.metadata_csv, lambda rows: rows[3].pop())
    with pytest.raises(DataError, match="16 fields; expected 17") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 4, rows[3][0])


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("image_type", "overview", "image_type"),
        ("image_manipulation", "edited", "image_manipulation"),
        ("sex", "other", "sex"),
        ("site", "elbow", "site"),
        ("skin_tone_class", "7", "skin_tone_class"),
        ("skin_tone_class", "2.5", "skin_tone_class"),
        ("age_approx", "old", "age_approx"),
        ("MONET_hair", "1.5", "MONET_hair"),
        ("MONET_erythema", "", "MONET_erythema"),
    ],
)
def test_metadata_value_outside_vocabulary(files, column, value, message):
    header = read_rows(files.metadata_csv)[0]
    col = header.index(column)

    def damage(rows):
        rows[9][col] = value
        if column in ("sex", "site", "skin_tone_class", "age_approx"):
            rows[10][col] = value  # lesion-level: keep the lesion's two rows consistent

    rows = edit_csv(files.metadata_csv, damage)
    with pytest.raises(DataError, match=message) as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 10, rows[9][0])
    assert repr(value) in str(info.value)


def test_metadata_rows_of_a_lesion_disagree(files):
    header = read_rows(files.metadata_csv)[0]
    col = header.index("sex")

    def damage(rows):
        rows[12][col] = "female" if rows[11][col] == "male" else "male"

    rows = edit_csv(files.metadata_csv, damage)
    with pytest.raises(DataError, match="identical") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 13, rows[12][0])


def test_duplicate_isic_id_in_metadata(files):
    def damage(rows):
        rows[6][2] = rows[3][2]

    rows = edit_csv(files.metadata_csv, damage)
    with pytest.raises(DataError, match="duplicate isic_id") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 7, rows[6][0])
    assert "line 4" in str(info.value)


def test_two_rows_of_the_same_type(files):
    def damage(rows):
        rows[3][1] = "dermoscopic"

    rows = edit_csv(files.metadata_csv, damage)
    with pytest.raises(DataError, match="second 'dermoscopic' row") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 5, rows[4][0])


def test_ground_truth_not_one_hot(files):
    def damage(rows):
        rows[4][3] = "1.0"
        rows[4][4] = "1.0"

    rows = edit_csv(files.ground_truth_csv, damage)
    with pytest.raises(DataError, match="not one-hot") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.ground_truth_csv, 5, rows[4][0])


def test_ground_truth_bad_value(files):
    def damage(rows):
        rows[2][5] = "0.5"

    rows = edit_csv(files.ground_truth_csv, damage)
    with pytest.raises(DataError, match="'0.5'; expected 0.0 or 1.0") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.ground_truth_csv, 3, rows[2][0])


def test_ground_truth_all_zero(files):
    rows = edit_csv(files.ground_truth_csv, lambda rows: rows[6].__setitem__(slice(1, None), ["0.0"] * 11))
    with pytest.raises(DataError, match="1.0 in: none") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.ground_truth_csv, 7, rows[6][0])


def test_ground_truth_unknown_class_column(files):
    edit_csv(files.ground_truth_csv, lambda rows: rows[0].__setitem__(11, "VASCULAR"))
    with pytest.raises(DataError, match="unexpected column\\(s\\) 'VASCULAR'") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.ground_truth_csv, 1, None)
    assert "missing column(s) VASC" in str(info.value)


def test_duplicate_lesion_in_ground_truth(files):
    def damage(rows):
        rows.insert(5, list(rows[2]))

    rows = edit_csv(files.ground_truth_csv, damage)
    with pytest.raises(DataError, match="duplicate lesion_id") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.ground_truth_csv, 6, rows[2][0])
    assert "line 3" in str(info.value)


def test_metadata_lesion_without_ground_truth(files):
    rows = read_rows(files.metadata_csv)
    edit_csv(files.ground_truth_csv, lambda gt: gt.pop(1))
    with pytest.raises(DataError, match="no row in MILK10k_Training_GroundTruth.csv") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 2, rows[1][0])


def test_ground_truth_lesion_without_metadata(files):
    def damage(rows):
        rows.append(["IL_9999999", *rows[1][1:]])

    rows = edit_csv(files.ground_truth_csv, damage)
    with pytest.raises(DataError, match="no row in MILK10k_Training_Metadata.csv") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.ground_truth_csv, len(rows), "IL_9999999")


def test_image_in_the_wrong_lesion_folder(files):
    rows = read_rows(files.metadata_csv)
    source = next(files.image_dir.rglob(f"{rows[1][2]}.jpg"))
    other = files.image_dir / rows[3][0]
    shutil.move(source, other / source.name)
    with pytest.raises(DataError, match="folder of lesion") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 2, rows[1][0])


def test_duplicate_image_file(files):
    rows = read_rows(files.metadata_csv)
    source = next(files.image_dir.rglob(f"{rows[1][2]}.jpg"))
    copy = files.image_dir / "extra" / source.name
    copy.parent.mkdir()
    shutil.copy(source, copy)
    with pytest.raises(DataError, match="found twice") as info:
        Milk10kDataset(files=files)
    assert str(source) in str(info.value) and str(copy) in str(info.value)


def test_empty_metadata_file(files):
    files.metadata_csv.write_text("")
    with pytest.raises(DataError, match="empty file") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 1, None)


def test_unknown_lesion_in_selection(files):
    with pytest.raises(DataError, match="not in the Training split") as info:
        Milk10kDataset(files=files, lesion_ids=["IL_0000000"])
    assert info.value.lesion_id == "IL_0000000"


def test_a_16_bit_png_named_jpg_keeps_its_content_and_32_bit_images_are_refused(tmp_path: Path) -> None:
    """Issue 28: PIL's convert('RGB') clips 16-bit values to 255 (an all-white image, no message)."""
    import numpy as np
    from PIL import Image

    from fusionkit.data.images import ImageSource, decode_image

    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 32).astype(np.uint16)  # 0 .. 65504
    path = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(ramp).save(path, format="PNG")
    source = ImageSource(isic_id="ISIC_0000001", lesion_id="IL_1", path=path, metadata_csv=tmp_path / "m.csv", line=2)
    decoded = decode_image(source)
    assert decoded.dtype == torch.uint8 and tuple(decoded.shape) == (3, 32, 64)
    expected = torch.from_numpy((ramp >> 8).astype(np.uint8))
    assert all(torch.equal(decoded[c], expected) for c in range(3))
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path, format="TIFF")  # a float TIFF
    with pytest.raises(DataError, match=r"cannot decode image ISIC_0000001 \('F' images \(32 bits per sample\)"):
        decode_image(source)


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_metadata_csv_that_is_not_utf8_is_refused_naming_the_file_and_line(files, encoding):
    """Issue 28: a Latin-1 or UTF-16 export of the metadata CSV was a UnicodeDecodeError traceback."""
    rows = read_rows(files.metadata_csv)
    rows[4][3] = "Hospital Clínic de Barcelona"  # the attribution of line 5
    with files.metadata_csv.open("w", newline="", encoding=encoding) as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(DataError, match=r"cannot decode the metadata CSV .*expected UTF-8 text") as info:
        Milk10kDataset(files=files)
    _assert_names(info.value, files.metadata_csv, 5 if encoding == "latin-1" else 1, None)
