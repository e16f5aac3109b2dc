"""The viewer contract in plain Python: what OHIF 3.13 needs from our SEG and SR, and what it will draw.

`seg_problems` names what would crash or blank OHIF; `ohif_sr_lines` reproduces what OHIF 3.13 writes
beside a TID 1500 outline (extensions/cornerstone-dicom-sr: _processTID1410Measurement,
_processNonGeometricallyDefinedMeasurement, _getLabelFromMeasuredValueSequence, DICOMSRDisplayTool
._getTextBoxLinesFromLabels: NUM items only, "CodeMeaning: value.toFixed(2) unit-code-value", at most
five lines, some meanings shortened). The browser tests check these against the real viewer, so the
fast tests here can guard the contract without a browser.
"""

from __future__ import annotations

from typing import Iterator

from pydicom.dataset import Dataset

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
              "1.2.840.10008.5.1.4.1.1.88.34"}
#: OHIF's SHORT_HAND_MAP (DICOMSRDisplayTool): a label it rewrites before the ": "
SHORT_HAND = {"Short Axis": "W: ", "Long Axis": "L: ", "AREA": "Area: ", "Length": "", "CORNERSTONEFREETEXT": ""}
FINDING_SITE_SCT = ("SCT", "363698007")
COMMENT = ("DCM", "121106")
MAX_LINES = 5


def _groups(fg: Dataset) -> Iterator[Dataset]:
    yield from fg.get("SharedFunctionalGroupsSequence", []) or []


def seg_problems(seg: Dataset) -> list[str]:
    """Why OHIF 3.13 would fail on this SEG (empty: none known).

    Without PixelMeasuresSequence the whole viewer crashes ("SpacingBetweenSlices of PixelMeasures");
    without PlaneOrientationSequence the SEG does not load ("ImageOrientationPatient"). OHIF reads
    both from the shared functional groups, or from every per-frame item. A BINARY SEG whose Columns is
    not a multiple of 8 (1-bit rows that end mid-byte) gets 400 from Orthanc 1.10 for every
    /dicom-web/.../frames/N, and OHIF then shows "Loading SEG..." for ever.
    """
    out: list[str] = []
    if str(seg.get("SOPClassUID", "")) != SEG_STORAGE:
        return [f"not a SEG: {seg.get('SOPClassUID')}"]
    if str(seg.get("SegmentationType", "")) == "BINARY" and int(seg.get("Columns", 0)) % 8:
        out.append(f"BINARY with {seg.Columns} columns (not a multiple of 8): Orthanc answers 400 to /frames/N")
    shared = next(_groups(seg), Dataset())
    frames = list(seg.get("PerFrameFunctionalGroupsSequence", []) or [])
    for keyword, attribute, n in (("PixelMeasuresSequence", "PixelSpacing", 2),
                                  ("PlaneOrientationSequence", "ImageOrientationPatient", 6)):
        holders = [shared] if keyword in shared else frames
        if not holders or not all(keyword in h for h in holders):
            out.append(f"{keyword} missing from the shared and per-frame functional groups")
            continue
        for h in holders:
            item = h[keyword].value[0] if h[keyword].value else Dataset()
            value = item.get(attribute)
            if value is None or len(value) != n:
                out.append(f"{keyword} has no {n}-valued {attribute}")
                break
            if keyword == "PixelMeasuresSequence" and not all(float(v) > 0 for v in value):
                out.append(f"PixelSpacing not positive: {list(value)}")
                break
    if not seg.get("SegmentSequence"):
        out.append("no SegmentSequence")
    else:
        for s in seg.SegmentSequence:
            if not str(s.get("SegmentLabel", "")).strip():
                out.append(f"segment {s.get('SegmentNumber')} has no label")
    for i, fg in enumerate(frames, start=1):
        derivation = fg.get("DerivationImageSequence") or []
        sources = [src for d in derivation for src in (d.get("SourceImageSequence") or [])]
        if not sources:
            out.append(f"frame {i} does not reference its source image")
            break
    if "ReferencedSeriesSequence" not in seg:
        out.append("no ReferencedSeriesSequence (OHIF finds the image to overlay through it)")
    return out


def _code(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> tuple[str, str, str]:
    seq = item.get(keyword) or []
    if not seq:
        return ("", "", "")
    c = seq[0]
    return (str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeValue", "")), str(c.get("CodeMeaning", "")))


def measurement_groups(sr: Dataset) -> list[Dataset]:
    """The TID 1501/1410 groups under Imaging Measurements (126010) of a TID 1500 report."""
    for item in sr.get("ContentSequence", []) or []:
        if _code(item)[1] == "126010":
            return [g for g in item.get("ContentSequence", []) or [] if _code(g)[1] == "125007"]
    return []


def _num_label(item: Dataset) -> tuple[str, str]:
    meaning = _code(item)[2]
    mv = (item.get("MeasuredValueSequence") or [Dataset()])[0]
    unit = _code(mv, "MeasurementUnitsCodeSequence")[1]
    number = mv.get("NumericValue")
    # OHIF 3.13 draws a value of exactly 0 as empty (seen in the viewer: "Capsule distance:  mm" for a
    # nodule touching the capsule); the contract says what it really draws, the issue note says what to fix
    value = f"{float(number):.2f}" if number not in (None, "") and float(number) != 0 else ""
    return meaning, f"{value} {unit}"


def ohif_labels(group: Dataset) -> list[tuple[str, str]]:
    """(label, value) pairs OHIF 3.13 collects from one measurement group, in its order."""
    items = list(group.get("ContentSequence", []) or [])
    geometric = any(i.get("ValueType") in {"SCOORD", "SCOORD3D"} for i in items)
    labels: list[tuple[str, str]] = []
    if not geometric:
        labels += [(str(i.TextValue), "") for i in items if _code(i)[:2] == COMMENT and i.get("TextValue")]
    labels += [_num_label(i) for i in items if i.get("ValueType") == "NUM" and i.get("MeasuredValueSequence")]
    if geometric:
        sites = [i for i in items if _code(i)[:2] == FINDING_SITE_SCT]
        if sites:
            labels.append((FINDING_SITE_SCT[1], _code(sites[0], "ConceptCodeSequence")[2]))
    return labels


def ohif_sr_lines(sr: Dataset) -> list[list[str]]:
    """The text OHIF 3.13 draws beside each outline of a TID 1500 SR (one list per group with an outline)."""
    out = []
    for group in measurement_groups(sr):
        labels = ohif_labels(group)
        lines = [f"{SHORT_HAND.get(label, label)}: {value}" for label, value in labels[:MAX_LINES]]
        out.append(lines)
    return out


def _tracking_uid(group: Dataset) -> str | None:
    return next((str(i.UID) for i in group.get("ContentSequence", []) or [] if _code(i)[1] == "112040"), None)


def _merged_has_scoord(groups: list[Dataset], group: Dataset) -> bool:
    """Does the measurement OHIF 3.13 makes of `group` have an outline? Its SR handler merges the content of
    all groups with the same Tracking UID first (_getMergedContentSequencesByTrackingUniqueIdentifiers): a
    group linking a SEG segment (TID 1410, IMAGE 121214, no SCOORD) shares its outline group's UID."""
    uid = _tracking_uid(group)
    return uid is not None and any(
        i.get("ValueType") == "SCOORD" for g in groups if _tracking_uid(g) == uid for i in g.get("ContentSequence", []) or [])


def sr_problems(sr: Dataset) -> list[str]:
    """Why OHIF 3.13 would show nothing (or fail) for this SR (empty: none known)."""
    if str(sr.get("SOPClassUID", "")) not in SR_CLASSES:
        return [f"not an SR class OHIF reads: {sr.get('SOPClassUID')}"]
    out: list[str] = []
    if _code(sr)[1] != "126000":
        out.append("root concept is not Imaging Measurement Report (126000): OHIF shows text only")
    template = (sr.get("ContentTemplateSequence") or [Dataset()])[0]
    if str(template.get("TemplateIdentifier", "")) != "1500":
        out.append("ContentTemplateSequence does not say TID 1500")
    groups = measurement_groups(sr)
    if not groups:
        out.append("no measurement group under Imaging Measurements (126010)")
    for n, group in enumerate(groups, start=1):
        items = list(group.get("ContentSequence", []) or [])
        codes = [_code(i)[1] for i in items]
        if "112039" not in codes:
            out.append(f"group {n}: no Tracking Identifier (112039)")
        if "112040" not in codes:
            out.append(f"group {n}: no Tracking Unique Identifier (112040): OHIF cannot load the group")
        scoords = [i for i in items if i.get("ValueType") == "SCOORD"]
        nested = [c for i in items if i.get("ValueType") == "NUM" for c in (i.get("ContentSequence") or [])
                  if c.get("ValueType") == "SCOORD"]
        for s in scoords + nested:
            refs = [r for c in (s.get("ContentSequence") or []) for r in (c.get("ReferencedSOPSequence") or [])]
            if not refs:
                out.append(f"group {n}: SCOORD without a referenced image")
        if not scoords and not nested and not _merged_has_scoord(groups, group):
            # OHIF merges the groups of one Tracking UID, then reads coords[0] of each merged measurement.
            out.append(f"group {n}: no SCOORD: OHIF 3.13 reads coords[0] of an empty list")
        for i in items:
            if i.get("ValueType") == "NUM" and i.get("MeasuredValueSequence"):
                unit = _code(i.MeasuredValueSequence[0], "MeasurementUnitsCodeSequence")
                if unit[0] != "UCUM" or unit[1] in {"", "1"}:
                    out.append(f"group {n}: NUM {_code(i)[2]!r} has unit {unit[1]!r}: OHIF prints the code value raw")
    return out
