"""The non-image inputs of the model: sex, age and the radiology report text.

Sex comes from PatientSex (M/F; O or empty: unknown). Age from PatientAge ("045Y", "006M", "010W",
"003D"); else from PatientBirthDate and StudyDate. The report is the text of an SR document in the
study (Basic Text, Enhanced or Comprehensive SR that we did not write ourselves), else a sidecar text
file `<report_dir>/<StudyInstanceUID>.txt`. Each missing input is recorded as a warning and passed on
as None; the model handles a missing input with its mask/default, it is never invented here.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom.dataset import Dataset

_AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


def patient_sex(ds: Dataset) -> str | None:
    value = str(ds.get("PatientSex", "") or "").strip().upper()
    return value if value in {"M", "F"} else None


def parse_age_string(value: str) -> float | None:
    """DICOM AS value ("045Y") in years; None when malformed."""
    value = (value or "").strip().upper()
    if len(value) != 4 or value[-1] not in _AGE_UNITS or not value[:3].isdigit():
        return None
    return int(value[:3]) * _AGE_UNITS[value[-1]]


def _date(value: object) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def patient_age_years(ds: Dataset) -> tuple[float | None, str]:
    """(age in years, where it came from: "PatientAge", "PatientBirthDate" or "missing")."""
    age = parse_age_string(str(ds.get("PatientAge", "") or ""))
    if age is not None and 0 <= age < 150:
        return round(age, 2), "PatientAge"
    birth = _date(ds.get("PatientBirthDate"))
    when = _date(ds.get("StudyDate")) or _date(ds.get("SeriesDate")) or _date(ds.get("ContentDate"))
    if birth and when and when >= birth:
        return round((when - birth).days / 365.25, 2), "PatientBirthDate"
    return None, "missing"


def sr_text(ds: Dataset) -> str:
    """All TEXT values of an SR document, in document order, one per line."""
    lines: list[str] = []

    def walk(items) -> None:
        for item in items or []:
            if str(item.get("ValueType", "")) == "TEXT":
                text = str(item.get("TextValue", "") or "").strip()
                if text:
                    lines.append(text)
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return "\n".join(lines)


def sidecar_report(report_dir: str | Path | None, study_uid: str) -> str | None:
    if not report_dir:
        return None
    path = Path(report_dir) / f"{study_uid}.txt"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text or None
