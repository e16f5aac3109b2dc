"""The "ohif" SR profile (Settings.sr_profile = "ohif"): the strict TID 1500 report re-laid so that
OHIF 3.x imports each nodule outline as a tracked measurement (measurement panel, editable outline),
while every group stays a valid TID 1410 group (docs/dicom-conformance.md, "Viewer").

What OHIF 3.13's importer reads (@cornerstonejs/adapters MeasurementReport.getSetupMeasurementData):
the tool from the Tracking Identifier, the outline from the ContentSequence of the group's *first* NUM
(only a group without NUM items is read from its own SCOORD), the label from the group's first Comment
(DCM 121106). A report without any NUM item (no nodule, not assessable, a notice) stays exactly as in
TID 1500: OHIF fails to load a report whose tracked tools carry no measurement at all ("Cannot read
properties of undefined (reading 'NumericValue')"). Otherwise, what changes, per measurement group that
holds an outline:

* Tracking Identifier (112039) becomes "Cornerstone3DTools@^0.1.0:PlanarFreehandROI": OHIF hydrates
  only groups whose tracking identifier names one of its tools (free text in DICOM, any value is
  valid). A readable label moves into a Comment TEXT item placed first in the group: the tracking
  identifier we wrote ("Nodule 1") followed by what the report says, read from its content ("Nodule 1:
  LLNM risk high, p=73% (LLNM-Net, research use only)"), since OHIF shows neither the CODE items nor
  the Finding TEXT.
* The outline (SCOORD, Image Region) stays in the group: it is the group's ROI (TID 1410). The NUM items
  measured on it (long and short axis, capsule distance) come first and each carries a copy as INFERRED
  FROM (TID 300), so the first NUM holds the outline the importer needs; the probability, the risk and
  the contribution shares are not inferred from the outline and carry no such item.
* Each group gets its own Tracking Unique Identifier, derived from the shared one: OHIF merges groups
  with the same UID into one measurement with one outline, so per-view outlines of one nodule would
  be lost. The group that links the outline to its SEG segment (no SCOORD: TID 1410 allows one ROI per
  group) gets the UID of the outline group before it, so OHIF merges the two.

Pure pydicom on a finished Dataset: the strict writer (llnm.dicom.sr.build_sr) calls `apply` last.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from llnm import ALGORITHM_NAME
from llnm.dicom import codes
from llnm.dicom.uids import deterministic_uid

#: the tracking identifier OHIF's importer maps to a closed/open polyline tool (PlanarFreehandROI)
OHIF_POLYLINE_TRACKING_ID = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
TRACKING_IDENTIFIER = "112039"
TRACKING_UID = "112040"
MEASUREMENT_GROUP = "125007"
IMAGING_MEASUREMENTS = "126010"
COMMENT = ("121106", "DCM", "Comment")
FINDING = "121071"
QUALITATIVE_EVALUATIONS = "C0034375"
#: NUM concepts measured on the nodule outline (INFERRED FROM it): long and short axis, capsule distance
OUTLINE_MEASUREMENTS = frozenset({codes.LENGTH.value, codes.WIDTH.value, codes.CAPSULE_DISTANCE.value})


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence") or []
    return str(seq[0].CodeValue) if seq else ""


def _comment(text: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = COMMENT
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([code])
    item.TextValue = text
    return item


def _inferred_from(scoord: Dataset) -> Dataset:
    item = copy.deepcopy(scoord)
    item.RelationshipType = "INFERRED FROM"
    return item


def measurement_groups(sr: Dataset) -> list[Dataset]:
    for item in sr.get("ContentSequence", []) or []:
        if _concept(item) == IMAGING_MEASUREMENTS:
            return [g for g in item.get("ContentSequence", []) or [] if _concept(g) == MEASUREMENT_GROUP]
    return []


def result_summary(sr: Dataset) -> str:
    """What the report says, in one line, from its content: "LLNM risk high, p=73%" when it holds the
    probability NUM (and the risk NUM; private codes of llnm.dicom.codes), else its Finding
    TEXT ("no nodule found", "not assessable: <reason>"); always ending in the research-use note."""
    probability, risk, finding = None, None, ""
    for group in measurement_groups(sr):
        for item in group.get("ContentSequence", []) or []:
            if item.get("ValueType") != "NUM" or not item.get("MeasuredValueSequence"):
                continue
            measured = item.MeasuredValueSequence[0]
            if _concept(item) == codes.LLNM_PROBABILITY.value and probability is None:
                probability = float(measured.NumericValue)
            elif _concept(item) == codes.LLNM_RISK.value and risk is None:
                units = measured.get("MeasurementUnitsCodeSequence") or []
                risk = str(units[0].CodeValue).strip("{}") if units else None
    for item in sr.get("ContentSequence", []) or []:
        if _concept(item) == QUALITATIVE_EVALUATIONS:
            finding = next((str(i.TextValue) for i in item.get("ContentSequence", []) or []
                            if _concept(i) == FINDING and i.get("TextValue")), "")
    if probability is not None:
        said = f"LLNM risk {risk or 'unknown'}, p={probability:.0f}%"
    else:
        said = finding
    note = f"({ALGORITHM_NAME}, research use only)"
    return f"{said} {note}" if said else note


def apply(sr: Dataset) -> Dataset:
    """A copy of a TID 1500 SR in the "ohif" layout (same SOP Instance UID; the caller decides UIDs)."""
    out = copy.deepcopy(sr)
    if not any(i.get("ValueType") == "NUM" for g in measurement_groups(out) for i in g.get("ContentSequence", []) or []):
        return out  # no measurement at all (no nodule, not assessable, a notice): left as TID 1500
    summary = result_summary(sr)
    outline_uids: dict[str, str] = {}  # shared tracking UID -> the UID given to its last outline group
    for number, group in enumerate(measurement_groups(out), start=1):
        items = list(group.get("ContentSequence", []) or [])
        scoords = [i for i in items if i.get("ValueType") == "SCOORD"]
        if not scoords:
            for item in items:  # the SEG link of the outline before it: the same measurement for OHIF
                if _concept(item) == TRACKING_UID and str(item.UID) in outline_uids:
                    item.UID = outline_uids[str(item.UID)]
            continue
        label = ""
        for item in items:
            if _concept(item) == TRACKING_IDENTIFIER:
                label = f"{item.TextValue}: {summary}"
                item.TextValue = OHIF_POLYLINE_TRACKING_ID
            elif _concept(item) == TRACKING_UID:
                shared = str(item.UID)
                item.UID = deterministic_uid("ohif-tracking", shared, number)
                outline_uids[shared] = str(item.UID)
        items = _outline_numbers_first(items, scoords[0])
        position = 1 + max((k for k, i in enumerate(items) if _concept(i) in {TRACKING_IDENTIFIER, TRACKING_UID}),
                           default=-1)
        if label:
            items.insert(position, _comment(label))
        group.ContentSequence = Sequence(items)
    return out


def _outline_numbers_first(items: list[Dataset], scoord: Dataset) -> list[Dataset]:
    """The NUM items in their place, those measured on the outline first and each INFERRED FROM it."""
    nums = [i for i in items if i.get("ValueType") == "NUM"]
    if not nums:
        return items
    derived = [n for n in nums if _concept(n) in OUTLINE_MEASUREMENTS]
    others = [n for n in nums if _concept(n) not in OUTLINE_MEASUREMENTS]
    for num in derived:
        num.ContentSequence = Sequence(list(num.get("ContentSequence", []) or []) + [_inferred_from(scoord)])
    first = next(k for k, i in enumerate(items) if i.get("ValueType") == "NUM")
    rest = [i for i in items if i.get("ValueType") != "NUM"]
    return rest[:first] + derived + others + rest[first:]
