"""Metadata corruptions of a MILK10k lesion record at severities 1-5.

Each takes ``(record, severity, rng)`` and returns a new
:class:`~fusionkit.data.tables.LesionRecord` (:func:`dataclasses.replace`; the input is never
changed). ``rng`` is the lesion's own generator (see
:meth:`fusionkit.evaluate.robustness.catalog.Perturbation.record`): its first draw decides whether
the lesion is hit, with probability :data:`AFFECTED_FRACTION` for the severity, so for one seed the
lesions hit at a severity are also hit at every higher one. Age noise hits every lesion with an
age, its standard deviation growing with the severity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fusionkit.data.schema import AGE_RANGE, SEXES, SITES
from fusionkit.data.tables import LesionRecord
from fusionkit.evaluate.robustness.images import check_severity

__all__ = [
    "AFFECTED_FRACTION",
    "AGE_NOISE_STD",
    "RecordCorruption",
    "age_noise",
    "missing_age",
    "missing_monet",
    "missing_sex",
    "missing_site",
    "missing_skin_tone",
    "wrong_sex",
    "wrong_site",
]

#: Signature of a metadata corruption: ``(record, severity, rng) -> record``.
RecordCorruption = Callable[[LesionRecord, int, np.random.Generator], LesionRecord]

#: Severity -> share of lesions whose field is blanked or replaced.
AFFECTED_FRACTION = (0.2, 0.4, 0.6, 0.8, 1.0)
#: Severity -> standard deviation of the age noise, in years (rounded to the 5-year grid after).
AGE_NOISE_STD = (5.0, 10.0, 15.0, 20.0, 30.0)


def _hit(severity: int, rng: np.random.Generator) -> bool:
    return bool(rng.random() < AFFECTED_FRACTION[check_severity(severity) - 1])


def _missing(field: str) -> RecordCorruption:
    def corrupt(record: LesionRecord, severity: int, rng: np.random.Generator) -> LesionRecord:
        blank: dict[str, Any] = {field: None}
        return replace(record, **blank) if _hit(severity, rng) else record

    corrupt.__name__ = f"missing_{field}"
    corrupt.__doc__ = f"``{field}`` blanked (read as unknown) on a share :data:`AFFECTED_FRACTION` of lesions."
    return corrupt


missing_age = _missing("age")
missing_sex = _missing("sex")
missing_site = _missing("site")
missing_skin_tone = _missing("skin_tone")


def missing_monet(record: LesionRecord, severity: int, rng: np.random.Generator) -> LesionRecord:
    """The MONET scores of both images unknown (an empty tuple, which
    :class:`~fusionkit.data.metadata.MetadataEncoder` encodes as the training mean, the value the
    inference inputs impute for a missing score) on a share :data:`AFFECTED_FRACTION` of lesions."""
    if not _hit(severity, rng):
        return record
    derm = None if record.derm is None else replace(record.derm, monet=())
    clinical = None if record.clinical is None else replace(record.clinical, monet=())
    return replace(record, derm=derm, clinical=clinical)


def wrong_sex(record: LesionRecord, severity: int, rng: np.random.Generator) -> LesionRecord:
    """The other sex on a share :data:`AFFECTED_FRACTION` of lesions (a blank sex gets a random one)."""
    if not _hit(severity, rng):
        return record
    others = [s for s in SEXES if s != record.sex]
    return replace(record, sex=others[int(rng.integers(len(others)))])


def wrong_site(record: LesionRecord, severity: int, rng: np.random.Generator) -> LesionRecord:
    """A different body site, drawn uniformly, on a share :data:`AFFECTED_FRACTION` of lesions."""
    if not _hit(severity, rng):
        return record
    others = [s for s in SITES if s != record.site]
    return replace(record, site=others[int(rng.integers(len(others)))])


def age_noise(record: LesionRecord, severity: int, rng: np.random.Generator) -> LesionRecord:
    """Age plus Gaussian noise of :data:`AGE_NOISE_STD` years, rounded to 5 years and clipped to
    the valid range; a blank age stays blank. One standard normal draw per lesion, scaled, so the
    error grows with the severity for a fixed seed."""
    std = AGE_NOISE_STD[check_severity(severity) - 1]
    z = rng.standard_normal()
    if record.age is None:
        return record
    age = float(np.clip(5.0 * np.round((record.age + std * z) / 5.0), *AGE_RANGE))
    return replace(record, age=age)
