"""Bad MILK10k data fuzzed, not only listed (issue 28 item 3).

Hypothesis mutates a small valid MILK10k folder (the metadata CSV, the ground-truth CSV, one
image) and reads it through the public loader, :class:`fusionkit.data.Milk10kDataset`, every item
decoded. The property: a harmless change (BOM, CRLF, column order, quoting, spacing, number
spelling, row order of the ground truth, a PNG of the same pixels named ``.jpg``) gives exactly the
clean folder's lesions, labels, metadata vectors and images; any other change is refused with a
:class:`~fusionkit.errors.DataError` whose message is one line naming the file and, for a CSV, the
line or lesion. Never another exception type, never a silently different result. Each example
works on a hard-linked copy of the clean folder (a mutated file is written anew, so the clean
folder is never touched).

The counts of examples run and refused are tallied in ``TALLY`` (``tests/README.md`` records them).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import make_set
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fusionkit.data import Milk10kDataset, find_split
from fusionkit.data.schema import GROUND_TRUTH_COLUMNS, MONET_COLUMNS
from fusionkit.errors import DataError

N_LESIONS = 6
EXAMPLES = int(os.environ.get("FUSIONKIT_FUZZ_EXAMPLES", 100))
"""Hypothesis examples per CSV property (fixed, derandomized by the suite's profile)."""
IMAGE_EXAMPLES = int(os.environ.get("FUSIONKIT_FUZZ_EXAMPLES", 60))
TALLY: Counter[str] = Counter()
"""``ran``, ``refused`` and ``equal``/``accepted`` per property; printed with ``FUSIONKIT_FUZZ_TALLY=1``."""

SAME = "same"
REFUSE = "refuse"
NUMERIC = ("age_approx", "skin_tone_class", *MONET_COLUMNS)
CATEGORICAL = {
    "image_type": ("clinical: close-up", "dermoscopic"),
    "image_manipulation": ("instrument only", "altered"),
    "sex": ("male", "female"),
    "site": ("trunk", "head_neck_face", "lower_extremity", "upper_extremity", "hand", "foot", "genital"),
}
BAD_NUMBERS = st.sampled_from(
    [
        "abc",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "-5",
        "-0.5",
        "1e9",
        "121",
        "1e308",
        "1e400",
        "0x10",
        "4O",
        "1,5",
        "--1",
        "two",
    ]
)
"""Values no numeric column of the metadata accepts (wrong type, NaN, infinite, negative, huge)."""
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


class Clean(dict):  # type: ignore[type-arg]
    """The clean folder (``root``) and what the loader reads from it (``read``); a short repr for reports."""

    def __repr__(self) -> str:
        return f"Clean({self['root']})"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Clean:
    """The clean folder and what the loader reads from it (per lesion: label, meta vector, images)."""
    root = tmp_path_factory.mktemp("milk-clean")
    make_set(root, n_lesions=N_LESIONS, seed=5)
    return Clean(root=root, read=_read(root))


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Iterator[None]:
    yield
    if os.environ.get("FUSIONKIT_FUZZ_TALLY"):
        print(f"\nfuzz tally (data): {dict(sorted(TALLY.items()))}")


def _as_decoded(image: torch.Tensor) -> torch.Tensor:
    """The image transform of the fuzz: none (the decoded uint8 pixels are compared)."""
    return image


def _read(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything the loader gives for every lesion: label, metadata vector and both images."""
    dataset = Milk10kDataset(root=root, transform=_as_decoded)
    out = {}
    for i in range(len(dataset)):
        item = dataset[i]
        out[item["lesion_id"]] = (item["label"], item["meta"], item["derm"], item["clinical"])
    return out


def _equal(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> bool:
    if list(a) != list(b):
        return False
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            if isinstance(x, torch.Tensor):
                if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                    return False
            elif x != y:
                return False
    return True


def _copy(clean_root: Path, into: Path) -> Path:
    root = into / "milk"
    shutil.copytree(clean_root, root, copy_function=os.link)
    return root


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file at ``path`` (never through the hard link to the clean copy)."""
    path.unlink()
    path.write_bytes(data)


def check(
    clean: dict[str, Any],
    mutate: Callable[[Path], str],
    property_name: str,
    accepted: Callable[[dict[str, tuple[Any, ...]]], None] | None = None,
) -> None:
    """Mutate a copy of the clean folder; the loader must give the clean result (``SAME``), refuse in
    one line (``REFUSE``), or, for another expectation, either refuse or give what ``accepted`` checks
    (an image decoded as expected; ``"accepted"``: it must not be refused)."""
    TALLY[f"{property_name}.ran"] += 1
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = _copy(clean["root"], Path(tmp))
        expect = mutate(root)
        try:
            got = _read(root)
        except DataError as error:
            message = str(error)
            assert "\n" not in message and "\r" not in message, f"a DataError of more than one line: {message!r}"
            assert error.path is not None and str(error.path) in message, f"names no file: {message!r}"
            assert error.path.resolve().is_relative_to(root.resolve()), f"names a file outside the folder: {message}"
            assert "expected" in message, f"says not what was expected: {message!r}"
            if error.path.suffix == ".csv":
                assert error.row is not None or error.lesion_id is not None, f"names no line or lesion: {message!r}"
            else:
                assert error.lesion_id is not None, f"an image error names no lesion: {message!r}"
            assert expect not in (SAME, "accepted"), f"a change that must be read was refused: {message}"
            TALLY[f"{property_name}.refused"] += 1
            return
        assert expect != REFUSE, "an invalid input was accepted"
        if expect == SAME:
            assert _equal(got, clean["read"]), "a harmless change gave a different result"
            TALLY[f"{property_name}.equal"] += 1
        else:
            assert accepted is not None
            accepted(got)
            TALLY[f"{property_name}.accepted"] += 1


# -- CSV text mutations ---------------------------------------------------------------------------
def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _text(rows: list[list[str]], **kwargs: Any) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", **kwargs).writerows(rows)
    return out.getvalue()


@st.composite
def harmless_csv(draw: st.DrawFn, rows: list[list[str]], *, shuffle_rows: bool) -> tuple[str, bytes]:
    """A change that must leave the read result equal: bytes of the whole file."""
    rows = [list(r) for r in rows]
    kind = draw(
        st.sampled_from(["bom", "crlf", "columns", "quote_all", "spaces", "blank_lines", "numbers", "rows", "combo"])
    )
    if kind == "rows" and not shuffle_rows:
        kind = "columns"
    kinds = draw(st.lists(st.sampled_from(["bom", "crlf", "columns", "quote_all", "spaces"]), min_size=2, unique=True))
    steps = kinds if kind == "combo" else [kind]
    quoting = csv.QUOTE_MINIMAL
    if "columns" in steps:
        order = [0, *draw(st.permutations(range(1, len(rows[0]))))]
        rows = [[r[i] for i in order] for r in rows]
    if "spaces" in steps:
        rows = [rows[0]] + [[f"{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{c} " for c in r] for r in rows[1:]]
    if "numbers" in steps:
        rows = [rows[0]] + [[_respell(c, draw) for c in r] for r in rows[1:]]
    if "rows" in steps:
        rows = [rows[0], *draw(st.permutations(rows[1:]))]
    if "quote_all" in steps:
        quoting = csv.QUOTE_ALL
    text = _text(rows, quoting=quoting)
    if "blank_lines" in steps:
        lines = text.split("\n")
        at = draw(st.integers(1, len(lines) - 1))
        text = "\n".join([*lines[:at], "", *lines[at:]])
    if "crlf" in steps:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    if "bom" in steps:
        data = b"\xef\xbb\xbf" + data
    return "+".join(steps), data


def _respell(cell: str, draw: st.DrawFn) -> str:
    """The same number written another way (``40`` as ``40.0``, ``0.25`` as ``2.5e-1``)."""
    try:
        value = float(cell)
    except ValueError:
        return cell
    if cell.strip().lower() in ("nan", "inf", "-inf"):
        return cell
    spellings = [repr(value), f"{value:.6e}"] if float(f"{value:.6e}") == value else [repr(value)]
    if value == int(value):
        spellings += [str(int(value)), f"{int(value)}.000"]
    return draw(st.sampled_from(spellings))


def _bytes_edit(draw: st.DrawFn, text: str) -> tuple[str, bytes]:
    """Encoding damage: a Latin-1 byte in a cell, the whole file in UTF-16 or Latin-1, a NUL byte."""
    kind = draw(st.sampled_from(["latin1_byte", "utf16", "latin1_file", "nul", "truncated", "empty"]))
    data = text.encode("utf-8")
    if kind == "latin1_byte":
        lines = data.split(b"\n")
        at = draw(st.integers(1, len(lines) - 2))
        lines[at] = lines[at].replace(b",", b",\xe9", 1)
        return kind, b"\n".join(lines)
    if kind == "utf16":
        return kind, text.encode("utf-16")
    if kind == "latin1_file":
        return kind, text.replace(",", ",\u00e9", 1).encode("latin-1")
    if kind == "nul":
        at = draw(st.integers(len(text.split("\n")[0]) + 1, len(data) - 2))
        return kind, data[:at] + b"\x00" + data[at:]
    if kind == "truncated":  # cut inside the file (past the header, not just the last newline)
        at = draw(st.integers(len(text.split("\n")[0]) + 2, len(data) - 2))
        return kind, data[:at]
    return kind, b""


@st.composite
def harmful_metadata(draw: st.DrawFn, rows: list[list[str]]) -> tuple[str, bytes]:
    """A change to the metadata CSV that the reader must refuse."""
    rows = [list(r) for r in rows]
    header = rows[0]
    body = rows[1:]
    kind = draw(
        st.sampled_from(
            [
                "drop_column",
                "duplicate_column",
                "rename_column",
                "bad_number",
                "unknown_category",
                "blank_id",
                "duplicate_row",
                "drop_row",
                "drop_lesion",
                "new_lesion_id",
                "extra_field",
                "missing_field",
                "bytes",
                "header_only",
            ]
        )
    )
    r = draw(st.integers(0, len(body) - 1))
    if kind == "drop_column":
        c = draw(st.integers(0, len(header) - 1))
        rows = [[x for i, x in enumerate(row) if i != c] for row in rows]
    elif kind == "duplicate_column":
        c = draw(st.integers(0, len(header) - 1))
        rows = [[*row, row[c]] for row in rows]
    elif kind == "rename_column":
        c = draw(st.integers(0, len(header) - 1))
        new = draw(st.sampled_from(["anatom_site_general", "age", "Sex", "lesion id", "isic_id "]) | SAFE_TEXT)
        if new.strip() == header[c]:
            new = header[c] + "_x"
        rows[0][c] = new
    elif kind == "bad_number":
        column = draw(st.sampled_from(NUMERIC))
        value = draw(BAD_NUMBERS)
        if column.startswith("MONET"):
            value = draw(st.sampled_from([value, "1.5", "-0.1", "2"]))
        elif column == "skin_tone_class":
            value = draw(st.sampled_from([value, "6", "2.5", "-1"]))
        body[r][header.index(column)] = value
    elif kind == "unknown_category":
        column = draw(st.sampled_from(sorted(CATEGORICAL)))
        value = draw(st.sampled_from(["Male", "torso", "dermoscopy", "clinical", "other"]) | SAFE_TEXT)
        if value.strip() in CATEGORICAL[column] or value.strip() == "":
            value = "unknown-" + value
        body[r][header.index(column)] = value
    elif kind == "blank_id":
        body[r][header.index(draw(st.sampled_from(["lesion_id", "isic_id"])))] = ""
    elif kind == "duplicate_row":
        body.insert(draw(st.integers(0, len(body))), list(body[r]))
    elif kind == "drop_row":
        del body[r]
    elif kind == "drop_lesion":
        lesion = body[r][0]
        body = [row for row in body if row[0] != lesion]
    elif kind == "new_lesion_id":
        lesion = body[r][0]
        body = [[("IL_9999999" if row[0] == lesion else row[0]), *row[1:]] for row in body]
    elif kind == "extra_field":
        body[r].append(draw(SAFE_TEXT))
    elif kind == "missing_field":
        body[r].pop(draw(st.integers(0, len(header) - 1)))
    elif kind == "header_only":
        body = []
    if kind == "bytes":
        return _bytes_edit(draw, _text(rows))
    return kind, _text([rows[0], *body] if kind not in ("drop_column", "duplicate_column") else rows).encode()


@st.composite
def harmful_ground_truth(draw: st.DrawFn, rows: list[list[str]]) -> tuple[str, bytes]:
    """A change to the ground-truth CSV that the reader must refuse."""
    rows = [list(r) for r in rows]
    header, body = rows[0], rows[1:]
    kind = draw(
        st.sampled_from(
            [
                "drop_column",
                "duplicate_column",
                "rename_column",
                "sum_zero",
                "sum_two",
                "bad_value",
                "duplicate_row",
                "drop_row",
                "unknown_lesion",
                "blank_id",
                "bytes",
                "header_only",
            ]
        )
    )
    r = draw(st.integers(0, len(body) - 1))
    hot = body[r].index("1.0")
    if kind == "drop_column":
        c = draw(st.integers(0, len(header) - 1))
        rows = [[x for i, x in enumerate(row) if i != c] for row in rows]
        return kind, _text(rows).encode()
    if kind == "duplicate_column":
        c = draw(st.integers(0, len(header) - 1))
        return kind, _text([[*row, row[c]] for row in rows]).encode()
    if kind == "rename_column":
        c = draw(st.integers(0, len(header) - 1))
        header[c] = draw(st.sampled_from(["akiec", "MEL ", "melanoma", "image"]))
        if header[c].strip() == GROUND_TRUTH_COLUMNS[c]:
            header[c] = "X" + header[c]
    elif kind == "sum_zero":
        body[r][hot] = "0.0"
    elif kind == "sum_two":
        other = draw(st.sampled_from([i for i in range(1, len(header)) if i != hot]))
        body[r][other] = "1.0"
    elif kind == "bad_value":
        c = draw(st.integers(1, len(header) - 1))
        body[r][c] = draw(st.sampled_from(["0.5", "nan", "abc", "-1", "", "2", "1e400", "true", "yes"]))
    elif kind == "duplicate_row":
        body.insert(draw(st.integers(0, len(body))), list(body[r]))
    elif kind == "drop_row":
        del body[r]
    elif kind == "unknown_lesion":
        body.append(["IL_9999999", *body[r][1:]])
    elif kind == "blank_id":
        body[r][0] = ""
    elif kind == "header_only":
        body = []
    if kind == "bytes":
        return _bytes_edit(draw, _text(rows))
    return kind, _text([header, *body]).encode()


def _metadata(root: Path) -> Path:
    return find_split(root).metadata_csv


def _truth(root: Path) -> Path:
    truth = find_split(root).ground_truth_csv
    assert truth is not None
    return truth


def _clean_rows(clean: dict[str, Any], which: Callable[[Path], Path]) -> list[list[str]]:
    return _rows(which(clean["root"]).read_text(encoding="utf-8"))


def _csv_property(clean: Clean, data: Any, which: Callable[[Path], Path], harmful: Any, name: str) -> None:
    """One CSV example: a harmless rewrite (equal result) or a harmful change (refused in one line)."""
    rows = _clean_rows(clean, which)
    harmless = data.draw(st.integers(0, 2), label="harmless if 0") == 0  # a third harmless, two thirds harmful
    strategy = harmless_csv(rows, shuffle_rows=which is _truth) if harmless else harmful(rows)
    _kind, content = data.draw(strategy, label="mutation")

    def mutate(root: Path) -> str:
        _replace(which(root), content)
        return SAME if harmless else REFUSE

    check(clean, mutate, name)


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_metadata_csv_mutations_are_equal_or_refused_in_one_line(clean, data):
    _csv_property(clean, data, _metadata, harmful_metadata, "metadata")


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_ground_truth_csv_mutations_are_equal_or_refused_in_one_line(clean, data):
    _csv_property(clean, data, _truth, harmful_ground_truth, "ground_truth")


# -- image mutations -------------------------------------------------------------------------------
IMAGE_KINDS = (
    "zero_bytes",
    "truncated",
    "garbage",
    "png_named_jpg",
    "grayscale",
    "cmyk",
    "png16",
    "float_tiff",
    "rgba",
    "palette",
    "one_pixel",
    "bomb_header",
)


def _with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header claims ``width`` x ``height`` (a decompression bomb's header; the
    scan data is the small image's, so building it costs nothing)."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5 : at + 7] = height.to_bytes(2, "big")
            data[at + 7 : at + 9] = width.to_bytes(2, "big")
            return bytes(data)
    raise AssertionError("no SOF marker in the JPEG")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _mutate_image(path: Path, kind: str, draw: st.DrawFn) -> tuple[str, np.ndarray | None]:
    """Replace the image at ``path``; returns the expectation and, when accepted, the expected pixels."""
    original = path.read_bytes()
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    if kind == "zero_bytes":
        _replace(path, b"")
        return REFUSE, None
    if kind == "truncated":  # the result is either refused or the same pixels (a cut after the last scan)
        _replace(path, original[: draw(st.integers(0, len(original) - 1), label="cut")])
        return "same-or-refuse", np.asarray(rgb)
    if kind == "garbage":
        _replace(path, draw(st.binary(min_size=1, max_size=64), label="garbage"))
        return REFUSE, None
    if kind == "png_named_jpg":
        _replace(path, _png(rgb))
        return SAME, None
    if kind == "grayscale":
        gray = rgb.convert("L")
        _replace(path, _png(gray) if draw(st.booleans(), label="as png") else _jpeg(gray))
        with Image.open(path) as im:
            decoded = np.asarray(im)
        return "accepted", np.repeat(decoded[:, :, None], 3, axis=2)
    if kind == "cmyk":
        _replace(path, _jpeg(rgb.convert("CMYK")))
        with Image.open(path) as im:
            return "accepted", np.asarray(im.convert("RGB"))
    if kind == "png16":
        values = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257) ^ np.uint16(draw(st.integers(0, 255)))
        _replace(path, _png(Image.fromarray(values.astype(np.uint16))))
        high = (values >> 8).astype(np.uint8)
        return "accepted", np.repeat(high[:, :, None], 3, axis=2)
    if kind == "float_tiff":  # 32-bit float samples have no agreed 8-bit scale
        out = io.BytesIO()
        Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32) / 255.0).save(out, format="TIFF")
        _replace(path, out.getvalue())
        return REFUSE, None
    if kind == "rgba":
        rgba = rgb.copy()
        rgba.putalpha(draw(st.integers(0, 255), label="alpha"))
        _replace(path, _png(rgba))
        return SAME, None
    if kind == "palette":
        pal = rgb.convert("P")
        _replace(path, _png(pal))
        return "accepted", np.asarray(pal.convert("RGB"))
    if kind == "one_pixel":
        colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
        _replace(path, _png(Image.new("RGB", (1, 1), colour)))
        return "accepted", np.array([[colour]], dtype=np.uint8)
    side = draw(st.sampled_from([12_000, 20_000, 65_000]), label="side")
    _replace(path, _with_size(original, side, side))
    return REFUSE, None


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return out.getvalue()


@settings(max_examples=IMAGE_EXAMPLES)
@given(data=st.data())
def test_image_mutations_are_decoded_as_expected_or_refused_in_one_line(clean, data):
    kind = data.draw(st.sampled_from(IMAGE_KINDS), label="kind")
    target = data.draw(st.sampled_from(sorted(clean["read"])), label="lesion")
    modality = data.draw(st.sampled_from(["derm", "clinical"]), label="modality")
    expected: dict[str, Any] = {}

    def mutate(root: Path) -> str:
        files = find_split(root)
        rows = _rows(files.metadata_csv.read_text(encoding="utf-8"))
        wanted = "dermoscopic" if modality == "derm" else "clinical: close-up"
        isic = next(r[2] for r in rows[1:] if r[0] == target and r[1] == wanted)
        path = next(files.image_dir.rglob(f"{isic}.jpg"))
        expect, pixels = _mutate_image(path, kind, data.draw)
        expected["pixels"] = pixels
        return expect

    def check_pixels(root_read: dict[str, tuple[Any, ...]]) -> None:
        image = root_read[target][2 if modality == "derm" else 3]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        pixels = expected.get("pixels")
        if pixels is not None:
            assert torch.equal(image, torch.from_numpy(np.array(pixels)).permute(2, 0, 1))
        others = {k: v for k, v in root_read.items() if k != target}
        assert _equal(others, {k: v for k, v in clean["read"].items() if k != target})

    check(clean, mutate, "image", check_pixels)


@pytest.mark.parametrize("side", [12_000, 20_000])
def test_an_image_over_max_image_pixels_is_refused_before_decoding(tmp_path, monkeypatch, side):
    """Found by the fuzz: a 12000x12000 header (under twice Pillow's limit, so only a warning from
    Pillow) was decoded, 432 MB allocated for its pixels; now it is refused from the header."""
    from PIL import ImageFile

    root = tmp_path / "milk"
    files = make_set(root, n_lesions=N_LESIONS, seed=5)
    path = sorted(files.image_dir.rglob("*.jpg"))[0]
    path.write_bytes(_with_size(path.read_bytes(), side, side))

    load = ImageFile.ImageFile.load

    def no_decoding(self: Any) -> Any:
        if self.size == (side, side):
            raise AssertionError("the pixels were decoded")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    dataset = Milk10kDataset(root=root)
    index = dataset.lesion_ids.index(path.parent.name)
    with pytest.raises(DataError, match=r"pixels.* exceeds limit|over the limit") as info:
        dataset[index]
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"lesion {path.parent.name}" in message


def test_a_split_whose_csvs_hold_only_their_headers_is_refused_naming_the_metadata_file(tmp_path):
    """Found by fuzzing both CSVs at once: a metadata and a ground truth with no rows gave
    ``MetadataEncoder.fit needs at least one lesion record``, naming no file."""
    from data_fixtures import edit_csv

    files = make_set(tmp_path / "milk", n_lesions=N_LESIONS, seed=5)
    assert files.ground_truth_csv is not None
    for path in (files.metadata_csv, files.ground_truth_csv):
        edit_csv(path, lambda rows: rows.__delitem__(slice(1, None)))
    with pytest.raises(DataError, match="no rows below the header") as info:
        Milk10kDataset(files=files)
    assert info.value.path == files.metadata_csv and info.value.row == 2 and "\n" not in str(info.value)


def test_a_bomb_as_the_first_image_is_refused_when_read_not_a_traceback_when_the_dataset_opens(tmp_path):
    """Found by the fuzz (500 examples): with no ``image_size`` the dataset probes the first image's
    size for absent images; a 20000x20000 header there raised Pillow's DecompressionBombError."""
    files = make_set(tmp_path / "milk", n_lesions=N_LESIONS, seed=5)
    path = min(files.image_dir.rglob("*.jpg"), key=lambda p: p.stem)  # the first by isic_id
    path.write_bytes(_with_size(path.read_bytes(), 20_000, 20_000))
    dataset = Milk10kDataset(files=files, transform=_as_decoded)
    with pytest.raises(DataError) as info:
        for i in range(len(dataset)):
            dataset[i]
    assert info.value.path == path and "\n" not in str(info.value)
