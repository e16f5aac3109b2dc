"""The non-image inputs of the model: sex, age and the radiology report text.

Sex comes from PatientSex (M/F; O or empty: unknown). Age from PatientAge ("045Y", "006M", "010W",
"003D"); else from PatientBirthDate and StudyDate. The report is the text of an SR document in the
study (Basic Text, Enhanced or Comprehensive SR that we did not write ourselves), else a sidecar text
file `<report_dir>/<StudyInstanceUID>.txt`. Each missing input is recorded as a warning and passed on
as None; the model handles a missing input with its mask/default, it is never invented here.

Every attribute here is Type 2 or 3 in what a modality sends: it may be missing or malformed, and that
never fails a study. `writer_header` gives the writers (highdicom, which reads the patient and study
attributes of the source and raises on a malformed date, time or sex, or on a missing one) a copy of the
source header in which each such attribute is present and well-formed, a malformed one emptied
(unknown). What was repaired is named by keyword only, never by value.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM, PersonName

_AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}
_DATE = re.compile(r"^\d{8}$")  # DA
#: the ACR-NEMA date form "yyyy.mm.dd", which PS3.5 6.2 (DA) asks readers to accept for backward
#: compatibility with versions of the standard before 3.0; still written by some older devices
_ACR_NEMA_DATE = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")
#: and the ACR-NEMA time form "hh:mm:ss.frac" (PS3.5 6.2, TM)
_ACR_NEMA_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(\.\d{1,6})?)?)?$")
#: `repaired` state of a date or time read in the ACR-NEMA form and written as DA / TM
CONVERTED_ACR_NEMA = "converted from the ACR-NEMA form"
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")  # TM


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
    """A DA value (YYYYMMDD, or the ACR-NEMA yyyy.mm.dd); None when empty or malformed (a Type 2 date
    may be either: unknown)."""
    text = str(value or "").strip()
    text = acr_nema_date(text) or text
    if not _DATE.match(text):
        return None
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def acr_nema_time(text: str) -> str | None:
    """"11:20:00" -> "112000" (a valid time of day in the ACR-NEMA form), else None."""
    found = _ACR_NEMA_TIME.match(text.strip())
    if found is None or ":" not in text:
        return None
    converted = "".join(part or "" for part in found.groups())
    return converted if _well_formed("StudyTime", converted) else None


def acr_nema_date(text: str) -> str | None:
    """"1994.11.05" -> "19941105" (a real calendar date in the ACR-NEMA form), else None."""
    found = _ACR_NEMA_DATE.match(text.strip())
    if found is None:
        return None
    converted = "".join(found.groups())
    try:
        dt.datetime.strptime(converted, "%Y%m%d")
    except ValueError:
        return None
    return converted


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
    """All TEXT values of an SR document, in document order, one line per section: a top-level item's
    texts (a section container's, however many items and line breaks they hold) joined by spaces, and
    consecutive top-level TEXT items of one concept (the numbered lines of an impression) joined too. The
    report's last section, its impression, is then one paragraph, which `impression_first` puts first
    whole (split line by line, only its last line went first and the rest fell beyond the tokens read)."""
    def texts(item) -> list[str]:
        out = []
        if str(item.get("ValueType", "")) == "TEXT":
            text = " ".join(str(item.get("TextValue", "") or "").split())
            if text:
                out.append(text)
        for child in item.get("ContentSequence") or []:
            out.extend(texts(child))
        return out

    sections: list[tuple[str | None, list[str]]] = []
    for item in ds.get("ContentSequence") or []:
        found = texts(item)
        if not found:
            continue
        concept = _concept_key(item) if str(item.get("ValueType", "")) == "TEXT" else None
        if concept is not None and sections and sections[-1][0] == concept:
            sections[-1][1].extend(found)
        else:
            sections.append((concept, found))
    return "\n".join(" ".join(found) for _, found in sections)


def _concept_key(item: Dataset) -> str | None:
    """(scheme, value) of an SR item's concept name, or None."""
    names = item.get("ConceptNameCodeSequence") or []
    if not names:
        return None
    code = names[0]
    return f"{code.get('CodingSchemeDesignator', '')}:{code.get('CodeValue', '')}"


def sidecar_report(report_dir: str | Path | None, study_uid: str) -> str | None:
    if not report_dir:
        return None
    path = Path(report_dir) / f"{study_uid}.txt"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text or None


#: The patient and study attributes highdicom reads from a source header for SEG, SR and key image (Type 2
#: in those objects: present, possibly empty), and how each must look to be used.
#: (ReferringPhysicianName is read with a default, so it is not among them.)
WRITER_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                     "StudyID", "StudyDate", "StudyTime")
#: Copied into SEG and SR when present (Patient Study module, Type 3): emptied when malformed, not added.
WRITER_OPTIONAL = ("PatientAge",)
_DATES = ("PatientBirthDate", "StudyDate")


def _well_formed(keyword: str, value: object) -> bool:
    """Is `value` usable as `keyword` by the writers? Empty always is (Type 2: unknown)."""
    if value is None or value == "":
        return True
    if not isinstance(value, (str, PersonName, DA, TM)):
        return False  # multi-valued, bytes of an unknown VR, or a sequence where one value belongs
    text = str(value).strip()
    if keyword in _DATES:
        if not _DATE.match(text):
            return False
        try:
            dt.datetime.strptime(text, "%Y%m%d")
        except ValueError:
            return False
        return True
    if keyword == "StudyTime":
        return (bool(_TIME.match(text)) and int(text[:2]) < 24 and (len(text) < 4 or int(text[2:4]) < 60)
                and (len(text) < 6 or int(text[4:6]) < 60))
    if keyword == "PatientSex":
        return text in {"M", "F", "O"}  # the enumerated values, upper case
    if keyword == "PatientAge":
        return parse_age_string(text) is not None
    return True


def _acr_nema(keyword: str, value: object) -> str | None:
    """The DA / TM form of a date or time attribute given in the ACR-NEMA form, else None."""
    if not isinstance(value, (str, DA, TM)):
        return None
    if keyword in _DATES:
        return acr_nema_date(str(value))
    return acr_nema_time(str(value)) if keyword == "StudyTime" else None


def writer_header(header: Dataset) -> tuple[Dataset, dict[str, str]]:
    """A copy of `header` the writers can always use, and what was repaired: {keyword: "missing",
    "malformed" or CONVERTED_ACR_NEMA}. A missing or malformed attribute of WRITER_ATTRIBUTES becomes
    empty (unknown), a date or time in the ACR-NEMA form the same value as DA / TM; every other element is the
    source's own (the copy shares them: none is changed)."""
    out = Dataset()
    if hasattr(header, "file_meta"):
        out.file_meta = header.file_meta
    for elem in header:
        out.add(elem)
    repaired: dict[str, str] = {}
    for keyword in WRITER_ATTRIBUTES + WRITER_OPTIONAL:
        tag = tag_for_keyword(keyword)
        if tag not in header:
            if keyword in WRITER_OPTIONAL:
                continue
            repaired[keyword] = "missing"
        else:
            try:
                value = header[tag].value
            except Exception:  # a raw value pydicom cannot even convert
                value = object()
            if _well_formed(keyword, value):
                continue
            converted = _acr_nema(keyword, value)
            if converted is not None:
                repaired[keyword] = CONVERTED_ACR_NEMA
                out[tag] = DataElement(tag, dictionary_VR(tag), converted)
                continue
            repaired[keyword] = "malformed"
        out[tag] = DataElement(tag, dictionary_VR(tag), "")  # a new element: the source's is untouched
    return out, repaired
