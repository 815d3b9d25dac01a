"""Encode a lesion's metadata as a fixed-width float vector (fitted on the training split only).

Layout of the encoded vector (35 values with the official vocabularies; see
:attr:`MetadataEncoder.feature_names`):

==========  ======  ==========================================================================
part        width   encoding
==========  ======  ==========================================================================
age         2       ``(age - mean) / std`` with the training mean/std (0 when blank), blank flag
sex         3       one-hot ``male``, ``female``, ``unknown`` (blank)
site        8       one-hot over the 7 sites + ``unknown`` (blank)
skin tone   6       one-hot 0..5 (all zero when blank)
MONET       14      the 7 dermoscopic then the 7 clinical scores, standardised per column with the
                    training mean/std (0 when the image row is absent)
altered     2       ``image_manipulation == altered`` for the dermoscopic, then the clinical image
==========  ======  ==========================================================================

An encoder may encode only some of these feature groups (``features``, the run config's
``data.metadata_features``): a model trained without ``monet`` needs no MONET scores, which a
clinic does not have for a new photo. The vector then holds the chosen groups' columns, in the
order above.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from fusionkit.data.schema import MONET_COLUMNS, SEXES, SITES, SKIN_TONES
from fusionkit.data.tables import ImageRecord, LesionRecord
from fusionkit.errors import DataError, DataLocation, FusionkitError
from fusionkit.utils.io import atomic_write_text

_FORMAT = "fusionkit.metadata_encoder"
_VERSION = 1

FEATURE_GROUPS: tuple[str, ...] = ("age", "sex", "site", "skin_tone", "monet", "altered")
"""The metadata feature groups, in encoding order (all of them by default)."""


def _groups() -> dict[str, list[str]]:
    return {
        "age": ["age", "age_missing"],
        "sex": [f"sex={s}" for s in (*SEXES, "unknown")],
        "site": [f"site={s}" for s in (*SITES, "unknown")],
        "skin_tone": [f"skin_tone={t}" for t in SKIN_TONES],
        "monet": [f"derm.{c}" for c in MONET_COLUMNS] + [f"clinical.{c}" for c in MONET_COLUMNS],
        "altered": ["derm.altered", "clinical.altered"],
    }


def _feature_names(features: Sequence[str] = FEATURE_GROUPS) -> tuple[str, ...]:
    groups = _groups()
    return tuple(name for group in FEATURE_GROUPS if group in features for name in groups[group])


def check_features(features: Sequence[str]) -> tuple[str, ...]:
    """The feature groups in encoding order; ``ValueError`` naming an unknown or repeated one."""
    unknown = [f for f in features if f not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"unknown metadata feature(s) {unknown}; expected some of {', '.join(FEATURE_GROUPS)}")
    if len(set(features)) != len(features):
        raise ValueError(f"metadata features {list(features)} name one twice")
    if not features:
        raise ValueError("metadata features are empty; drop 'meta' from the model's modalities instead")
    return tuple(f for f in FEATURE_GROUPS if f in features)


class MetadataEncoder:
    """Turns :class:`~fusionkit.data.tables.LesionRecord` metadata into a float vector.

    The vocabularies are fixed by :mod:`fusionkit.data.schema`; only the age and MONET statistics
    are learnt, by :meth:`fit`, which must see the training lesions only. A fitted encoder is
    saved next to a trained model with :meth:`save` and restored with :meth:`load`.
    """

    def __init__(self, *, features: Sequence[str] = FEATURE_GROUPS) -> None:
        self.features: tuple[str, ...] = check_features(features)
        """The feature groups encoded (see :data:`FEATURE_GROUPS`)."""
        self.feature_names: tuple[str, ...] = _feature_names(self.features)
        full = _feature_names()
        self._columns = np.array([full.index(n) for n in self.feature_names], dtype=np.int64)
        self.age_mean: float | None = None
        self.age_std: float | None = None
        self.monet_mean: tuple[float, ...] | None = None
        self.monet_std: tuple[float, ...] | None = None
        self.n_fitted: int = 0

    @property
    def metadata_width(self) -> int:
        """Length of the encoded vector M (35 with the official vocabularies): the metadata encoder's input width."""
        return len(self.feature_names)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` or :meth:`load` has set the statistics."""
        return self.age_mean is not None

    def fit(self, records: Iterable[LesionRecord]) -> Self:
        """Learn age and MONET means and standard deviations from ``records`` (the training split).

        A statistic with no observed value (or zero spread) falls back to mean 0 / std 1.
        """
        records = list(records)
        if not records:
            raise FusionkitError("MetadataEncoder.fit needs at least one lesion record")
        ages = np.array([r.age for r in records if r.age is not None], dtype=np.float64)
        monet = np.full((len(records), 2 * len(MONET_COLUMNS)), np.nan)
        for i, record in enumerate(records):
            for j, image in enumerate((record.derm, record.clinical)):
                if image is not None and image.monet:
                    monet[i, j * 7 : (j + 1) * 7] = image.monet
        self.age_mean, self.age_std = _mean_std(ages)
        stats = [_mean_std(column[~np.isnan(column)]) for column in monet.T]
        self.monet_mean = tuple(m for m, _ in stats)
        self.monet_std = tuple(s for _, s in stats)
        self.n_fitted = len(records)
        return self

    def transform(self, records: Sequence[LesionRecord]) -> torch.Tensor:
        """Encode ``records`` into a float32 tensor of shape ``(len(records), width)``.

        Raises:
            DataError: a value outside the vocabulary (names the metadata file, line and lesion).
        """
        self._check_fitted()
        out = np.zeros((len(records), self.metadata_width), dtype=np.float32)
        for i, record in enumerate(records):
            out[i] = self._encode(record)
        return torch.from_numpy(out)

    def transform_one(self, record: LesionRecord) -> torch.Tensor:
        """Encode one record into a float32 tensor of shape ``(width,)``."""
        return self.transform([record])[0]

    def _check_fitted(self) -> None:
        self._statistics()

    def _statistics(self) -> tuple[float, float, tuple[float, ...], tuple[float, ...]]:
        """``(age_mean, age_std, monet_mean, monet_std)`` of a fitted encoder; raises when not fitted."""
        if self.age_mean is None or self.age_std is None or self.monet_mean is None or self.monet_std is None:
            raise FusionkitError(
                "MetadataEncoder is not fitted: call fit(training records) or MetadataEncoder.load(path)"
            )
        return self.age_mean, self.age_std, self.monet_mean, self.monet_std

    def _encode(self, record: LesionRecord) -> np.ndarray:
        """The full 35-value encoding of ``record``, restricted to this encoder's feature groups."""
        where: DataLocation = {"path": record.metadata_csv, "row": record.line, "lesion_id": record.lesion_id}
        age_mean, age_std, monet_mean, monet_std = self._statistics()
        v = np.zeros(len(_feature_names()), dtype=np.float32)
        if record.age is None:
            v[1] = 1.0
        else:
            v[0] = (record.age - age_mean) / age_std
        offset = 2
        v[offset + _index(record.sex, SEXES, "sex", where, unknown=True)] = 1.0
        offset += len(SEXES) + 1
        v[offset + _index(record.site, SITES, "site", where, unknown=True)] = 1.0
        offset += len(SITES) + 1
        if record.skin_tone is not None:
            v[offset + _index(record.skin_tone, SKIN_TONES, "skin_tone_class", where, unknown=False)] = 1.0
        offset += len(SKIN_TONES)
        for j, image in enumerate((record.derm, record.clinical)):
            if image is not None and image.monet:  # no scores (an empty tuple): the training mean, 0 here
                scores = np.asarray(image.monet, dtype=np.float64)
                if scores.shape != (len(MONET_COLUMNS),) or not np.all((scores >= 0) & (scores <= 1)):
                    raise DataError(f"MONET scores {image.monet}; expected 7 values in [0, 1]", **where)
                mean = np.asarray(monet_mean[j * 7 : (j + 1) * 7])
                std = np.asarray(monet_std[j * 7 : (j + 1) * 7])
                v[offset + j * 7 : offset + (j + 1) * 7] = (scores - mean) / std
        offset += 2 * len(MONET_COLUMNS)
        v[offset] = float(_altered(record.derm, where))
        v[offset + 1] = float(_altered(record.clinical, where))
        return v[self._columns]

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON-able data."""
        age_mean, age_std, monet_mean, monet_std = self._statistics()
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "features": list(self.features),
            "feature_names": list(self.feature_names),
            "n_fitted": self.n_fitted,
            "age": {"mean": age_mean, "std": age_std},
            "monet": {"mean": list(monet_mean), "std": list(monet_std)},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], *, path: str | Path | None = None) -> MetadataEncoder:
        """Rebuild an encoder from :meth:`to_dict` output (``path`` only names the source in errors).

        A state written before encoders chose their features (no ``features`` key) encodes all of them.
        """
        try:
            encoder = cls(features=state.get("features", FEATURE_GROUPS))
        except (ValueError, TypeError, AttributeError) as error:
            raise DataError(f"malformed metadata encoder state ({error})", path=path) from error
        try:
            if state["format"] != _FORMAT or state["version"] != _VERSION:
                raise DataError(
                    f"format {state['format']!r} version {state['version']!r}; expected {_FORMAT!r} version {_VERSION}",
                    path=path,
                )
            if tuple(state["feature_names"]) != encoder.feature_names:
                raise DataError(
                    "feature names differ from this fusionkit version's metadata encoding; "
                    "expected " + ", ".join(encoder.feature_names),
                    path=path,
                )
            encoder.age_mean = float(state["age"]["mean"])
            encoder.age_std = float(state["age"]["std"])
            encoder.monet_mean = tuple(float(x) for x in state["monet"]["mean"])
            encoder.monet_std = tuple(float(x) for x in state["monet"]["std"])
            encoder.n_fitted = int(state["n_fitted"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"malformed metadata encoder state ({error!r})", path=path) from error
        if len(encoder.monet_mean) != 14 or len(encoder.monet_std) != 14:
            raise DataError("expected 14 MONET means and standard deviations", path=path)
        return encoder

    def save(self, path: str | Path) -> None:
        """Write the fitted state as JSON, atomically (temporary file, then ``os.replace``)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> MetadataEncoder:
        """Read an encoder written by :meth:`save`.

        Raises:
            DataError: the file is missing, not JSON, or not an encoder of this version.
        """
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"cannot read a metadata encoder ({error})", path=path) from None
        if not isinstance(state, dict):
            raise DataError("expected a JSON object", path=path)
        return cls.from_dict(state, path=path)

    def __repr__(self) -> str:
        state = f"fitted on {self.n_fitted} lesions" if self.fitted else "not fitted"
        features = "" if self.features == FEATURE_GROUPS else f", features={list(self.features)}"
        return f"MetadataEncoder(metadata_width={self.metadata_width}{features}, {state})"


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > 1e-12 else 1.0)


def _index(value: object, vocabulary: Sequence[object], column: str, where: DataLocation, *, unknown: bool) -> int:
    if value is None and unknown:
        return len(vocabulary)
    try:
        return list(vocabulary).index(value)
    except ValueError:
        raise DataError(
            f"{column} is {value!r}; expected one of {', '.join(repr(v) for v in vocabulary)}", **where
        ) from None


def _altered(image: ImageRecord | None, where: DataLocation) -> bool:
    if image is None:
        return False
    if image.manipulation not in ("instrument only", "altered"):
        raise DataError(
            f"image_manipulation is {image.manipulation!r}; expected 'instrument only' or 'altered'", **where
        )
    return image.altered
