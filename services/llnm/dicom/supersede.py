"""What a re-run of a study writes: the same bytes for the same result, and a clear succession for a new one.

The UIDs of our objects are derived from the inputs and from what the result says (llnm.dicom.uids), so
a re-run with the same result gives the same UIDs, and a changed result (a late report, another model)
gives new ones. This module makes both cases unambiguous for a PACS:

* Same result: every object keeps the creation time of the first run (InstanceCreationDate/Time,
  ContentDate/Time, the Contributing Equipment's ContributionDateTime, the Secondary Capture times), so
  a re-run writes byte-identical objects and a PACS that receives them again changes nothing.
* Changed result: the new SR references the SR it replaces in PredecessorDocumentsSequence (PS3.3
  C.17.2, SR Document General Module, Hierarchical SOP Instance Reference Macro, Table C.17-3), and an
  IHE IOCM rejection note is added to the outputs: a Key Object Selection Document (PS3.3 A.35.4,
  TID 2010) titled (113001, DCM, "Rejected for Quality Reasons") that lists every superseded object
  (SR, SEG, key images) in its content and in CurrentRequestedProcedureEvidenceSequence. A PACS that
  implements IOCM hides the rejected objects; one that does not stores the note beside them, and the
  SR's predecessor reference and the newer creation time still say which result is current
  (docs/dicom-conformance.md, "Reprocessing").

What was written before is known from a `ResultRecord` (creation time, the objects, what they
superseded): summary.json in `llnm predict`'s results folder, the audit trail's "result" event in the
worker. Pure: datasets and records in, datasets out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code

from llnm import ALGORITHM_NAME, MANUFACTURER, RESEARCH_USE_STATEMENT, __version__
from llnm.dicom.uids import deterministic_uid

#: CID 7010 document title of an IHE IOCM rejection note for objects replaced by a better result.
REJECTED_FOR_QUALITY_REASONS = Code("113001", "DCM", "Rejected for Quality Reasons")
KO_SERIES_NUMBER = 9704
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
_PATIENT_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                  "ReferringPhysicianName")
_IMAGE_TYPES = {"SEG", "SC"}
_BUILDERS = {ALGORITHM_NAME, "highdicom"}  # ManufacturerModelName of the equipment items a build adds


@dataclass(frozen=True)
class ObjectRef:
    """One object we wrote, as summary.json lists it."""

    type: str  # "SR", "SEG", "SC" (key image) or "KO" (rejection note)
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str

    @classmethod
    def of(cls, ds: Dataset) -> "ObjectRef":
        modality = str(ds.get("Modality", ""))
        kind = modality if modality in {"SR", "SEG", "KO"} else "SC"
        return cls(kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))

    @classmethod
    def from_dict(cls, d: dict) -> "ObjectRef":
        return cls(str(d["type"]), str(d["sop_class_uid"]), str(d["sop_instance_uid"]),
                   str(d["series_instance_uid"]))

    def as_dict(self) -> dict:
        return {"type": self.type, "sop_class_uid": self.sop_class_uid,
                "sop_instance_uid": self.sop_instance_uid, "series_instance_uid": self.series_instance_uid}


@dataclass(frozen=True)
class ResultRecord:
    """What one run of a study wrote: enough to write the same bytes again, or to supersede it."""

    created: str  # ISO 8601 with the UTC offset of the writing machine
    objects: tuple[ObjectRef, ...]
    supersedes: tuple[ObjectRef, ...] = field(default=())

    @classmethod
    def from_dict(cls, d: dict | None) -> "ResultRecord | None":
        """From summary.json or an audit "result" event; None when it holds no usable record."""
        if not d or not d.get("created"):
            return None
        try:
            dt.datetime.fromisoformat(str(d["created"]))
            return cls(str(d["created"]), tuple(ObjectRef.from_dict(o) for o in d.get("objects") or []),
                       tuple(ObjectRef.from_dict(o) for o in d.get("supersedes") or []))
        except (KeyError, TypeError, ValueError):
            return None

    def as_dict(self) -> dict:
        return {"created": self.created, "objects": [o.as_dict() for o in self.objects],
                "supersedes": [o.as_dict() for o in self.supersedes]}

    @property
    def result_uids(self) -> frozenset[str]:
        """The result proper: every object but the rejection note (which only speaks of an older one)."""
        return frozenset(o.sop_instance_uid for o in self.objects if o.type != "KO")


def succeed(datasets: list[Dataset], prior: ResultRecord | None,
            now: dt.datetime | None = None) -> tuple[list[Dataset], ResultRecord]:
    """Stamp the creation time and, when `prior` is another result, add the predecessor reference and the
    rejection note. Returns the datasets to write (the note last) and the record to keep for next time."""
    refs = tuple(ObjectRef.of(ds) for ds in datasets)
    uids = frozenset(r.sop_instance_uid for r in refs)
    if prior is not None and prior.result_uids == uids:
        created, supersedes = prior.created, prior.supersedes
    else:
        created = (now or dt.datetime.now()).astimezone().isoformat(timespec="seconds")
        supersedes = tuple(o for o in prior.objects if o.type != "KO" and o.sop_instance_uid not in uids) \
            if prior is not None else ()
    when = dt.datetime.fromisoformat(created)
    out = list(datasets)
    for ds in out:
        stamp_created(ds, when)
    if supersedes and out:
        predecessors = [o for o in supersedes if o.type == "SR"]
        for ds in out:
            if str(ds.get("Modality", "")) == "SR" and predecessors:
                ds.PredecessorDocumentsSequence = predecessor_sequence(str(ds.StudyInstanceUID), predecessors)
        note = rejection_note(out[0], supersedes)
        stamp_created(note, when)
        out.append(note)
    record = ResultRecord(created, tuple(ObjectRef.of(ds) for ds in out), supersedes)
    return out, record


def stamp_created(ds: Dataset, when: dt.datetime) -> None:
    """Set every creation time we write (never the source's acquisition or study times) to `when`.

    DA/TM carry the writing machine's local time, as highdicom writes them; ContributionDateTime (DT)
    carries its offset. The Contributing Equipment items touched are the two this build adds (ours and
    highdicom's, "Software library used to create this instance"), never the source's."""
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    for prefix in ("InstanceCreation", "Content"):
        if f"{prefix}Date" in ds or f"{prefix}Time" in ds:
            setattr(ds, f"{prefix}Date", date)
            setattr(ds, f"{prefix}Time", time)
    if "DateOfSecondaryCapture" in ds or "TimeOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    for item in ds.get("ContributingEquipmentSequence", None) or []:
        if str(item.get("ManufacturerModelName", "")) in _BUILDERS:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S%z")


def predecessor_sequence(study_uid: str, objects: list[ObjectRef]) -> Sequence:
    """Hierarchical SOP Instance Reference Macro (PS3.3 Table C.17-3) of `objects`, one study."""
    series: dict[str, list[ObjectRef]] = {}
    for o in objects:
        series.setdefault(o.series_instance_uid, []).append(o)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = Sequence()
    for series_uid, members in sorted(series.items()):
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = Sequence()
        for o in sorted(members, key=lambda m: m.sop_instance_uid):
            ref = Dataset()
            ref.ReferencedSOPClassUID = o.sop_class_uid
            ref.ReferencedSOPInstanceUID = o.sop_instance_uid
            item.ReferencedSOPSequence.append(ref)
        study.ReferencedSeriesSequence.append(item)
    return Sequence([study])


def _stand_in(template: Dataset, o: ObjectRef) -> Dataset:
    """The header of a superseded object as the note needs it: patient and study from `template` (one of
    the new objects of the same study), the rest from the record."""
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        if keyword in template:
            setattr(ds, keyword, template.data_element(keyword).value)
    ds.SeriesInstanceUID = o.series_instance_uid
    ds.SOPClassUID = o.sop_class_uid
    ds.SOPInstanceUID = o.sop_instance_uid
    if o.type in _IMAGE_TYPES:  # an IMAGE content item, not COMPOSITE (PS3.3 C.17.3.2.1)
        ds.Rows = ds.Columns = 1
    return ds


def rejection_note(template: Dataset, rejected: tuple[ObjectRef, ...]) -> Dataset:
    """IHE IOCM rejection note (KOS, "Rejected for Quality Reasons") for `rejected`, in `template`'s study.

    Its UIDs are derived from the rejected objects, so the same supersession gives the same note."""
    study_uid = str(template.StudyInstanceUID)
    stand_ins = [_stand_in(template, o) for o in sorted(rejected, key=lambda r: (r.type, r.sop_instance_uid))]
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=stand_ins,
        description=(f"Superseded by a newer result of {ALGORITHM_NAME} for this study (new input or model). "
                     f"{RESEARCH_USE_STATEMENT}")[:1024],
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=stand_ins,
        content=content,
        series_instance_uid=deterministic_uid("series", "KO-rejection", study_uid),
        series_number=KO_SERIES_NUMBER,
        sop_instance_uid=deterministic_uid("instance", "KO-rejection", study_uid,
                                           *sorted(o.sop_instance_uid for o in rejected)),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    note.SeriesDescription = f"{ALGORITHM_NAME} rejection of superseded results"[:64]
    note.ManufacturerModelName = ALGORITHM_NAME
    note.SoftwareVersions = f"llnm {__version__}"
    return note


def succeed_output(output, prior: ResultRecord | None, now: dt.datetime | None = None) -> ResultRecord:
    """`succeed` on a StudyOutput (llnm.predict), in place: its datasets and its summary.json, which then
    holds the record ("created", "objects", "supersedes") a later run reads back."""
    output.datasets, record = succeed(list(output.datasets), prior, now)
    summary = output.summary
    if summary is not None:
        summary["created"] = record.created
        summary["supersedes"] = [o.as_dict() for o in record.supersedes]
        listed = {o.get("sop_instance_uid") for o in summary.setdefault("objects", [])}
        for ds in output.datasets:
            if str(ds.SOPInstanceUID) not in listed:
                summary["objects"].append({**ObjectRef.of(ds).as_dict(), "file": f"{ds.SOPInstanceUID}.dcm"})
    return record


def is_rejection_note(path) -> bool:
    """Is the file at `path` a Key Object Selection document (our rejection notes are the only ones we write)?"""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID) \
            == KEY_OBJECT_SELECTION
    except (InvalidDicomError, OSError, AttributeError, ValueError):
        return False
