"""Read and validate the MILK10k CSV files into per-lesion records.

Every problem raises :class:`~fusionkit.errors.DataError` naming the file, the 1-based line (the
header is line 1) and the lesion, and saying what was expected. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from fusionkit.data.images import ImageSource, scan_images
from fusionkit.data.layout import Milk10kFiles
from fusionkit.data.schema import (
    AGE_RANGE,
    CLASS_NAMES,
    CLINICAL,
    DERMOSCOPIC,
    IMAGE_TYPES,
    MANIPULATIONS,
    METADATA_COLUMNS,
    MONET_COLUMNS,
    SEXES,
    SITES,
    SKIN_TONES,
)
from fusionkit.errors import DataError, DataLocation

logger = logging.getLogger("fusionkit.data")

#: What to do with a lesion whose dermoscopic or clinical image is missing.
MissingImagePolicy = Literal["error", "absent"]


@dataclass(frozen=True)
class ImageRecord:
    """One metadata row: an image of a lesion.

    Attributes:
        isic_id: the image id.
        image_type: ``"dermoscopic"`` or ``"clinical: close-up"``.
        manipulation: ``"instrument only"`` or ``"altered"``.
        monet: the seven MONET concept scores in :data:`~fusionkit.data.schema.MONET_COLUMNS` order
            (an empty tuple: unknown, encoded as the training mean; the robustness corruption
            ``missing_monet`` makes such records, the CSV reader never does).
        line: the 1-based line of the metadata CSV.
    """

    isic_id: str
    image_type: str
    manipulation: str
    monet: tuple[float, ...]
    line: int

    @property
    def altered(self) -> bool:
        """Whether ``image_manipulation`` is ``altered``."""
        return self.manipulation == "altered"


@dataclass(frozen=True)
class LesionRecord:
    """Everything the CSV files say about one lesion.

    Attributes:
        lesion_id: the lesion id, e.g. ``IL_0000652``.
        age: ``age_approx`` or ``None`` when blank.
        sex: ``"male"``/``"female"`` or ``None`` when blank.
        skin_tone: 0..5 or ``None`` when blank.
        site: one of :data:`~fusionkit.data.schema.SITES` or ``None`` when blank.
        derm: the dermoscopic row, or ``None`` when the metadata has none.
        clinical: the clinical close-up row, or ``None`` when the metadata has none.
        label: class index into :data:`~fusionkit.data.schema.CLASS_NAMES`, ``None`` if unlabelled.
        metadata_csv: the metadata file the rows come from.
    """

    lesion_id: str
    age: float | None
    sex: str | None
    skin_tone: int | None
    site: str | None
    derm: ImageRecord | None
    clinical: ImageRecord | None
    label: int | None
    metadata_csv: Path

    @property
    def line(self) -> int:
        """First metadata line of the lesion (0 for a lesion with no image row, e.g. built in code)."""
        return min((r.line for r in (self.derm, self.clinical) if r is not None), default=0)


@dataclass(frozen=True)
class Milk10kTable:
    """A validated split: its lesion records and the image file of every image that exists.

    Attributes:
        files: where the split was read from.
        lesions: one record per lesion, in metadata-file order.
        image_sources: ``isic_id -> ImageSource`` for every listed image whose file was found.
    """

    files: Milk10kFiles
    lesions: tuple[LesionRecord, ...]
    image_sources: dict[str, ImageSource]

    @property
    def labelled(self) -> bool:
        """Whether the split has a ground truth."""
        return self.files.ground_truth_csv is not None


def _first_undecodable_line(path: Path) -> int | None:
    """The 1-based number of the first line of ``path`` that is not UTF-8 (the decoder reads ahead in
    blocks, so the reader's own line count would point before it)."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return number
    return None


class _decoded:
    """A ``csv.reader`` whose decoding and CSV errors become one :class:`DataError` naming the file and line."""

    def __init__(self, reader: Any, path: Path, what: str) -> None:
        self._reader, self._path, self._what = reader, path, what

    @property
    def line_num(self) -> int:
        return int(self._reader.line_num)

    def __iter__(self) -> _decoded:
        return self

    def __next__(self) -> list[str]:
        try:
            return list(next(self._reader))
        except UnicodeDecodeError:
            raise DataError(
                f"cannot decode the {self._what} CSV (a Latin-1 or UTF-16 export?); expected UTF-8 text",
                path=self._path,
                row=_first_undecodable_line(self._path),
            ) from None
        except csv.Error as error:
            raise DataError(
                f"cannot read the {self._what} CSV ({error}); expected a CSV file",
                path=self._path,
                row=self._reader.line_num,
            ) from None


def _rows(path: Path, expected: Sequence[str], what: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` of a CSV whose header must hold exactly the ``expected`` columns."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"cannot open the {what} ({error})", path=path) from error
    with handle:
        reader = _decoded(csv.reader(handle), path, what)
        header = next(reader, None)
        if header is None:
            raise DataError(f"empty file; expected the {what} header {','.join(expected)}", path=path, row=1)
        header = [h.strip() for h in header]
        missing = [c for c in expected if c not in header]
        unexpected = [c for c in header if c not in expected]
        duplicated = sorted(c for c, n in Counter(header).items() if n > 1)
        if missing or unexpected or duplicated:
            parts = []
            if missing:
                parts.append(f"missing column(s) {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected column(s) {', '.join(repr(c) for c in unexpected)}")
            if duplicated:
                parts.append(f"duplicated column(s) {', '.join(duplicated)}")
            raise DataError(
                f"unexpected {what} header ({'; '.join(parts)}); expected {','.join(expected)}",
                path=path,
                row=1,
            )
        for values in reader:
            line = reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                lesion = values[0].strip() if values and header[0] == "lesion_id" else None
                raise DataError(
                    f"{len(values)} fields; expected {len(header)} as in the header",
                    path=path,
                    row=line,
                    lesion_id=lesion,
                )
            yield line, {k: v.strip() for k, v in zip(header, values, strict=True)}


def _choice(value: str, vocabulary: Sequence[str], column: str, where: DataLocation, *, blank_ok: bool = False) -> str:
    if value not in vocabulary:
        allowed = ", ".join(repr(v) for v in vocabulary) + (" or blank" if blank_ok else "")
        raise DataError(f"column {column!r} is {value!r}; expected one of {allowed}", **where)
    return value


def _optional_choice(value: str, vocabulary: Sequence[str], column: str, where: DataLocation) -> str | None:
    """``None`` for a blank ``value``, else :func:`_choice` (whose message then allows a blank)."""
    if value == "":
        return None
    return _choice(value, vocabulary, column, where, blank_ok=True)


def _number(value: str, column: str, low: float, high: float, where: DataLocation, integer: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (low <= number <= high) or (integer and number != int(number)):
        kind = "an integer" if integer else "a number"
        raise DataError(f"column {column!r} is {value!r}; expected {kind} in [{low:g}, {high:g}]", **where)
    return number


def read_metadata(path: str | Path) -> list[LesionRecord]:
    """Read a metadata CSV into unlabelled lesion records (in order of first appearance).

    Raises:
        DataError: bad header, a value outside the vocabulary, a duplicate image id, two rows of the
            same image type for a lesion, or lesion-level values that differ between its two rows.
    """
    path = Path(path)
    lesions: dict[str, dict] = {}
    seen_images: dict[str, int] = {}
    for line, row in _rows(path, METADATA_COLUMNS, "metadata"):
        lesion_id = row["lesion_id"]
        where: DataLocation = {"path": path, "row": line, "lesion_id": lesion_id or None}
        if not lesion_id:
            raise DataError("blank lesion_id; expected an id such as IL_0000652", **where)
        isic_id = row["isic_id"]
        if not isic_id:
            raise DataError("blank isic_id; expected an id such as ISIC_8149219", **where)
        if isic_id in seen_images:
            raise DataError(
                f"duplicate isic_id {isic_id} (already on line {seen_images[isic_id]}); expected each image once",
                **where,
            )
        seen_images[isic_id] = line
        image_type = _choice(row["image_type"], IMAGE_TYPES, "image_type", where)
        manipulation = _choice(row["image_manipulation"], MANIPULATIONS, "image_manipulation", where)
        age = None if row["age_approx"] == "" else _number(row["age_approx"], "age_approx", *AGE_RANGE, where)
        sex = _optional_choice(row["sex"], SEXES, "sex", where)
        tone_text = row["skin_tone_class"]
        skin_tone = None
        if tone_text != "":
            skin_tone = int(_number(tone_text, "skin_tone_class", SKIN_TONES[0], SKIN_TONES[-1], where, integer=True))
        site = _optional_choice(row["site"], SITES, "site", where)
        monet = tuple(_number(row[c], c, 0.0, 1.0, where) for c in MONET_COLUMNS)
        image = ImageRecord(isic_id=isic_id, image_type=image_type, manipulation=manipulation, monet=monet, line=line)
        fields = {"age": age, "sex": sex, "skin_tone": skin_tone, "site": site}
        entry = lesions.get(lesion_id)
        if entry is None:
            lesions[lesion_id] = {"fields": fields, "line": line, image_type: image}
            continue
        if image_type in entry:
            raise DataError(
                f"second {image_type!r} row for this lesion (first on line {entry[image_type].line}); "
                f"expected one {DERMOSCOPIC!r} and one {CLINICAL!r} row per lesion",
                **where,
            )
        for name, value in fields.items():
            if entry["fields"][name] != value:
                raise DataError(
                    f"{name} is {value!r} but {entry['fields'][name]!r} on line {entry['line']}; "
                    "expected age, sex, skin tone and site identical on a lesion's rows",
                    **where,
                )
        entry[image_type] = image
    return [
        LesionRecord(
            lesion_id=lesion_id,
            derm=entry.get(DERMOSCOPIC),
            clinical=entry.get(CLINICAL),
            label=None,
            metadata_csv=path,
            **entry["fields"],
        )
        for lesion_id, entry in lesions.items()
    ]


def read_ground_truth(path: str | Path) -> dict[str, tuple[int, int]]:
    """Read a ground-truth CSV into ``lesion_id -> (class index, line)``.

    The class columns may come in any order; the index is always into
    :data:`~fusionkit.data.schema.CLASS_NAMES` (the official column order).

    Raises:
        DataError: bad header or unknown class column, a row that is not one-hot (``0.0``/``1.0``
            with exactly one ``1.0``), or a duplicate lesion id.
    """
    path = Path(path)
    labels: dict[str, tuple[int, int]] = {}
    for line, row in _rows(path, ("lesion_id", *CLASS_NAMES), "ground-truth"):
        lesion_id = row["lesion_id"]
        where: DataLocation = {"path": path, "row": line, "lesion_id": lesion_id or None}
        if not lesion_id:
            raise DataError("blank lesion_id; expected an id such as IL_0000652", **where)
        if lesion_id in labels:
            raise DataError(
                f"duplicate lesion_id (already on line {labels[lesion_id][1]}); expected one row per lesion",
                **where,
            )
        hot = []
        for index, name in enumerate(CLASS_NAMES):
            text = row[name]
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if value not in (0.0, 1.0):
                raise DataError(f"class {name} is {text!r}; expected 0.0 or 1.0 (one-hot)", **where)
            if value == 1.0:
                hot.append(index)
        if len(hot) != 1:
            got = ", ".join(CLASS_NAMES[i] for i in hot) or "none"
            raise DataError(f"row is not one-hot (1.0 in: {got}); expected exactly one 1.0", **where)
        labels[lesion_id] = (hot[0], line)
    return labels


def _image_source(
    files: Milk10kFiles, lesion: LesionRecord, image: ImageRecord, found: dict[str, Path]
) -> ImageSource | None:
    path = found.get(image.isic_id)
    if path is None:
        return None
    folder = path.parent.name
    if folder.startswith("IL_") and folder != lesion.lesion_id:
        raise DataError(
            f"image {image.isic_id} lies in the folder of lesion {folder} at {path}; expected "
            f"{lesion.lesion_id}/{image.isic_id}.jpg as listed on this line",
            path=files.metadata_csv,
            row=image.line,
            lesion_id=lesion.lesion_id,
        )
    return ImageSource(
        isic_id=image.isic_id,
        lesion_id=lesion.lesion_id,
        path=path,
        metadata_csv=files.metadata_csv,
        line=image.line,
    )


def read_milk10k(files: Milk10kFiles, *, missing_image: MissingImagePolicy = "error") -> Milk10kTable:
    """Read, validate and join a split: metadata rows paired per lesion, labels, image files.

    Args:
        files: the split, from :func:`~fusionkit.data.layout.find_split`.
        missing_image: ``"error"`` raises on a lesion without both images (no row, or no file);
            ``"absent"`` keeps the lesion and marks the image absent (zero tensor, presence False).

    Raises:
        DataError: any invalid row (see :func:`read_metadata`, :func:`read_ground_truth`), a metadata
            file without rows, a lesion without a ground-truth row or the reverse, or a missing image
            under ``"error"``.
    """
    if missing_image not in ("error", "absent"):
        raise ValueError(f"missing_image must be 'error' or 'absent', got {missing_image!r}")
    lesions = read_metadata(files.metadata_csv)
    if not lesions:
        raise DataError(
            "no rows below the header; expected one clinical and one dermoscopic row per lesion",
            path=files.metadata_csv,
            row=2,
        )
    if files.ground_truth_csv is not None:
        truth = read_ground_truth(files.ground_truth_csv)
        unmatched = [lesion.lesion_id for lesion in lesions if lesion.lesion_id not in truth]
        if unmatched:
            first = next(lesion for lesion in lesions if lesion.lesion_id == unmatched[0])
            raise DataError(
                f"lesion has no row in {files.ground_truth_csv.name} ({len(unmatched)} lesion(s) of the "
                "metadata lack one); expected one ground-truth row per lesion",
                path=files.metadata_csv,
                row=first.line,
                lesion_id=first.lesion_id,
            )
        known = {lesion.lesion_id for lesion in lesions}
        for lesion_id, (_, line) in truth.items():
            if lesion_id not in known:
                raise DataError(
                    f"lesion has no row in {files.metadata_csv.name}; expected every labelled lesion "
                    "to have a dermoscopic and a clinical metadata row",
                    path=files.ground_truth_csv,
                    row=line,
                    lesion_id=lesion_id,
                )
        lesions = [replace(lesion, label=truth[lesion.lesion_id][0]) for lesion in lesions]
    found = scan_images(files.image_dir)
    sources: dict[str, ImageSource] = {}
    for lesion in lesions:
        for kind, image in ((DERMOSCOPIC, lesion.derm), (CLINICAL, lesion.clinical)):
            if image is None:
                if missing_image == "error":
                    raise DataError(
                        f"lesion has no {kind!r} row; expected one {DERMOSCOPIC!r} and one {CLINICAL!r} "
                        "row per lesion (pass missing_image='absent' to keep it with the image marked absent)",
                        path=files.metadata_csv,
                        row=lesion.line,
                        lesion_id=lesion.lesion_id,
                    )
                continue
            source = _image_source(files, lesion, image, found)
            if source is None:
                if missing_image == "error":
                    raise DataError(
                        f"image file {image.isic_id}.jpg ({kind}) not found under {files.image_dir}; expected "
                        f"{files.image_dir.name}/{lesion.lesion_id}/{image.isic_id}.jpg (pass "
                        "missing_image='absent' to keep the lesion with the image marked absent)",
                        path=files.metadata_csv,
                        row=image.line,
                        lesion_id=lesion.lesion_id,
                    )
                continue
            sources[image.isic_id] = source
    stray = sorted(set(found) - sources.keys() - _listed_ids(lesions))
    if stray:
        logger.warning(
            "%d image file(s) under %s are not listed in %s and are not used: %s%s",
            len(stray),
            files.image_dir,
            files.metadata_csv.name,
            ", ".join(str(found[s]) for s in stray[:5]),
            ", ..." if len(stray) > 5 else "",
        )
    return Milk10kTable(files=files, lesions=tuple(lesions), image_sources=sources)


def _listed_ids(lesions: Sequence[LesionRecord]) -> set[str]:
    return {image.isic_id for lesion in lesions for image in (lesion.derm, lesion.clinical) if image is not None}


def summarize(table: Milk10kTable) -> str:
    """A plain one-paragraph summary: lesions, images per type, class counts, missing values."""
    lesions = table.lesions
    derm = sum(1 for x in lesions if x.derm is not None and x.derm.isic_id in table.image_sources)
    clinical = sum(1 for x in lesions if x.clinical is not None and x.clinical.isic_id in table.image_sources)
    parts = [
        f"MILK10k {table.files.split}: {len(lesions)} lesions",
        f"images: {derm} dermoscopic, {clinical} clinical ({len(lesions) - derm} dermoscopic and "
        f"{len(lesions) - clinical} clinical absent)",
    ]
    if table.labelled:
        counts = Counter(x.label for x in lesions)
        parts.append("classes: " + ", ".join(f"{name} {counts.get(i, 0)}" for i, name in enumerate(CLASS_NAMES)))
    else:
        parts.append("unlabelled")
    missing = {
        "age": sum(x.age is None for x in lesions),
        "sex": sum(x.sex is None for x in lesions),
        "skin tone": sum(x.skin_tone is None for x in lesions),
        "site": sum(x.site is None for x in lesions),
    }
    parts.append("missing values: " + ", ".join(f"{k} {v}" for k, v in missing.items()))
    return "; ".join(parts)
