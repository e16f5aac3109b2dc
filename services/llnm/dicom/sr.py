"""TID 1500 "Imaging Measurement Report" (Comprehensive SR) with the LLNM result, shaped for OHIF.

Tree (docs/dicom-conformance.md has it with every code):
  CONTAINER Imaging Measurement Report (DCM 126000), TID 1500
    language, observer context (device: this algorithm; its UID is derived from the algorithm alone),
    procedure reported
    CONTAINER Image Library: every analysed source image
    CONTAINER Imaging Measurements
      CONTAINER Measurement Group (TID 1410), one per view in which the index nodule was outlined
        Tracking Identifier (names the finding: "Nodule 1"; never the result) + Tracking Unique
          Identifier (the same for every view of the nodule, and for every re-run of the study through the
          same algorithm: derived from study, source image, finding index and algorithm, not the result)
        Finding: Nodule; Finding Site: right/left lobe of thyroid (or "lobe of thyroid")
        SCOORD POLYLINE (closed) outline on the referenced image and frame
        Algorithm identification (name, version, model hashes as parameters)
        index view only: NUM LLNM probability (%), LLNM risk (1-3, unit {low}/{medium}/{high}),
          capsule distance, long and short axis (mm, or {pixels} when uncalibrated), contribution
          shares (%) -- in this order, as OHIF prints the first five NUM items; CODE risk level,
          CODE calibration, TEXT location
        every group: TEXT research-use statement
    CONTAINER Qualitative Evaluations: the finding, the calibration state and the statement that
      this is research use only, for every report (also when no nodule was found); a Comment
      "view N not used: <reason>" per view the quality gate declined

Only outlines that passed the quality gate (llnm.quality) are written. A not-assessable study (no view
passed) gets the no-nodule layout: one group outlining the region analysed (never a declined mask) with
the finding "not assessable: <reason>", and no NUM item, risk level or location anywhere.

Links (PS3.16 TID 1410): a TID 1410 group holds exactly one ROI, an Image Region (SCOORD) or a
Referenced Segmentation Frame (IMAGE 121214, with the Source Image for Segmentation 121233). So each
outlined view gets two groups with the same Tracking Identifier and Tracking UID (the same finding): the
outline with the numbers, then the nodule's segment in the SEG written for that frame (its SOP Instance
UID and segment number) with the source image and frame. Every SEG referenced is listed in
CurrentRequestedProcedureEvidenceSequence. The document is a Comprehensive 3D SR (IHE AIR's SR class);
its content uses no SCOORD3D.

A study with no usable image (`build_notice_sr`) gets a short report: the finding "not analysed: <reason>",
the algorithm identity, the received instances as evidence, and one group outlining the whole received
image (TID 1410; TID 1501 without ROI when no image was received).
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.coding import Code

from llnm import ALGORITHM_NAME, MANUFACTURER, RESEARCH_USE_STATEMENT, __version__
from llnm.dicom import codes
from llnm.dicom.common import (SERIES_NUMBER, AnalysedFrame, add_common, algorithm_key, calibration_state, frame_key,
                               laterality, outline, reportable, versions_key)
from llnm.dicom.loading import FrameRef
from llnm.dicom.reading import CURRENT_CLASS, MULTIFRAME_SOP_CLASSES
from llnm.dicom.uids import deterministic_uid, output_instance_uid, output_series_uid
from llnm.quality import view_declined
from llnm.study import StudyResult, View

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
DIAGNOSTIC_ULTRASONOGRAPHY = Code("16310003", "SCT", "Diagnostic ultrasonography")
DEVICE = Code("121007", "DCM", "Device")
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def algorithm_id(result: StudyResult) -> hd.sr.AlgorithmIdentification:
    parameters = [f"{name}={version}" for name, version in sorted(result.model_versions.items())]
    return hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__,
                                         parameters=parameters or None)


#: Tracking Identifiers (TID 1410, DCM 112039): they name the finding, never what the algorithm said
#: about it (the result is in the group's content), so they do not change when the result does.
NODULE_TRACKING_ID = "Nodule 1"
GLAND_TRACKING_ID = "Thyroid gland"


def device_observer_uid(result: StudyResult) -> str:
    """Device Observer UID (TID 1004, DCM 121012): one UID per algorithm (name, software version, model
    content hashes), the same for every study it reports; another model hash gives another device."""
    return str(deterministic_uid("device", ALGORITHM_NAME, algorithm_key(result)))


def tracking_uid(study_uid: str, source: str, finding: str, index: int, result: StudyResult) -> str:
    """Tracking Unique Identifier (TID 1410, DCM 112040) of one finding: derived from the study, the
    source image ("<SOPInstanceUID>:<frame>") it is reported on, the finding and its index and the
    algorithm, never from the result, so a changed answer about the same finding keeps its UID."""
    return str(deterministic_uid("tracking", study_uid, source, finding, index, algorithm_key(result)))


def _index_source(frames: list[AnalysedFrame], result: StudyResult, study_uid: str) -> str:
    """The source frame of the index view (else the first analysed frame, else the study)."""
    for frame in frames:
        if any(index == result.index_view for index, _, _ in frame.views):
            return frame.key
    return frames[0].key if frames else study_uid


def _num(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
    """A NUM item; the algorithm is identified once per group, not repeated on every number."""
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=CONTAINS)


def _region(ref: FrameRef, view: View, mask: np.ndarray) -> hd.sr.ImageRegion | None:
    xy = outline(mask)
    if xy is None:
        return None
    row0, col0 = view.crop_offset
    # DICOM 2D coordinates: (column, row) with (0, 0) the top-left corner of the top-left pixel.
    graphic = xy + np.array([col0 + 0.5, row0 + 0.5])
    source = hd.sr.SourceImageForRegion(  # a retired class as its current one; _restore_classes puts it back
        referenced_sop_class_uid=CURRENT_CLASS.get(ref.sop_class_uid, ref.sop_class_uid),
        referenced_sop_instance_uid=ref.sop_instance_uid,
        referenced_frame_numbers=[ref.frame_number] if ref.frame_number is not None else None,
    )
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                             graphic_data=graphic.astype(np.float32), source_image=source)


def measurements(result: StudyResult) -> list[hd.sr.Measurement]:
    """The NUM items of the index view's group; the same values go into summary.json. None at all for a
    not-assessable study (no number is ever built on a mask the quality gate declined)."""
    out: list[hd.sr.Measurement] = []
    if not result.assessable:
        return out
    values = summary_numbers(result)
    # Order matters: OHIF prints the first five NUM items beside the outline.
    if values["probability"] is not None:
        out.append(_num(codes.LLNM_PROBABILITY, round(100.0 * values["probability"], 2), codes.PERCENT))
    if result.risk_level in codes.RISK_UNITS:
        out.append(_num(codes.LLNM_RISK, float(result.risk_level), codes.RISK_UNITS[result.risk_level]))
    unit = codes.MM if result.calibrated else codes.PIXELS
    distance = values["capsule_distance_mm"] if result.calibrated else values["capsule_distance_px"]
    if distance is not None:
        out.append(_num(codes.CAPSULE_DISTANCE, distance, unit))
    size = values["nodule_size_mm"] if result.calibrated else values["nodule_size_px"]
    if size:
        out.append(_num(codes.LENGTH, size["length"], unit))
        out.append(_num(codes.WIDTH, size["width"], unit))
    for name, share in values["contributions"].items():
        out.append(_num(codes.contribution_code(name), round(100.0 * share, 2), codes.PERCENT))
    return out


def summary_numbers(result: StudyResult) -> dict:
    """Rounded numbers shared by the SR and summary.json (so a round trip compares equal); all empty
    for a not-assessable study, whatever the result holds."""
    if not result.assessable:
        return {"probability": None, "risk_level": None, "risk_label": None, "capsule_distance_mm": None,
                "capsule_distance_px": None, "nodule_size_mm": None, "nodule_size_px": None, "contributions": {}}

    def r(value: float | None, digits: int) -> float | None:
        return None if value is None else round(float(value), digits)

    size_mm = None
    if result.calibrated and result.nodule_length_mm is not None and result.nodule_width_mm is not None:
        size_mm = {"length": r(result.nodule_length_mm, 2), "width": r(result.nodule_width_mm, 2)}
    size_px = None
    if not result.calibrated:
        size_px = _pixel_size(result)
    return {
        "probability": r(result.probability, 4),
        "risk_level": int(result.risk_level) if result.risk_level else None,  # 1 low, 2 medium, 3 high
        "risk_label": codes.RISK_NAMES.get(result.risk_level) if result.risk_level else None,
        "capsule_distance_mm": r(result.capsule_distance_mm, 2) if result.calibrated else None,
        "capsule_distance_px": r(result.capsule_distance_px, 2),
        "nodule_size_mm": size_mm,
        "nodule_size_px": size_px,
        "contributions": {k: r(v, 4) for k, v in sorted(result.contributions.items(), key=lambda kv: (-kv[1], kv[0]))},
    }


def _pixel_size(result: StudyResult) -> dict | None:
    """Uncalibrated: length/width in pixels from the pipeline's features, if it gave them."""
    features = getattr(result.views[result.index_view], "features", None) if (
        result.index_view is not None and result.index_view < len(result.views)) else None
    length = getattr(features, "length_px", None)
    width = getattr(features, "width_px", None)
    if length is None or width is None:
        return None
    return {"length": round(float(length), 2), "width": round(float(width), 2)}


def build_sr(frames: list[AnalysedFrame], views: list[View], result: StudyResult, study_uid: str,
             evidence: list[Dataset], profile: str = "tid1500",
             segmentations: dict[str, Dataset] | None = None) -> Dataset:
    """The report; `profile` "ohif" re-lays it for OHIF's measurement panel (llnm.dicom.sr_ohif),
    under its own UID since its content differs. `segmentations`: the SEG written for each analysed
    frame (by `AnalysedFrame.key`); each outlined nodule is linked to its segment there."""
    if profile not in ("tid1500", "ohif"):
        raise ValueError(f"LLNM_SR_PROFILE={profile!r}: expected 'tid1500' or 'ohif'")
    segmentations = segmentations or {}
    nodule_uid = tracking_uid(study_uid, _index_source(frames, result, study_uid), "nodule", 1, result)
    tracking = hd.sr.TrackingIdentifier(uid=nodule_uid, identifier=NODULE_TRACKING_ID)
    algorithm = algorithm_id(result)
    groups = []
    linked: dict[str, Dataset] = {}
    for frame in frames:
        for index, view, view_result in frame.views:
            if (view_result.nodule_mask is None or not np.any(view_result.nodule_mask)
                    or not reportable(result, view_result)):
                continue  # no nodule, or an outline the quality gate declined
            region = _region(frame.ref, view, view_result.nodule_mask)
            if region is None:
                continue
            is_index = index == result.index_view
            qualitative = []
            if is_index and result.risk_level in codes.RISK_CODES:
                qualitative.append(hd.sr.QualitativeEvaluation(codes.LLNM_RISK_LEVEL,
                                                               codes.RISK_CODES[result.risk_level]))
            if is_index:
                qualitative.append(hd.sr.QualitativeEvaluation(
                    codes.CALIBRATION, codes.CALIBRATED if result.calibrated else codes.UNCALIBRATED))
            site = [hd.sr.FindingSite(codes.lobe_code(laterality(frame.ref.header)))]
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_region=region,
                finding_type=codes.NODULE,
                finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                finding_sites=site,
                algorithm_id=algorithm,
                measurements=measurements(result) if is_index else None,
                qualitative_evaluations=qualitative or None,
            )
            items = group[0].ContentSequence
            if is_index and result.location:
                where = ", ".join(f"{k} {v}" for k, v in sorted(result.location.items()))
                items.append(_text(codes.NODULE_LOCATION, where))
            items.append(_text(codes.COMMENT, RESEARCH_USE_STATEMENT))
            groups.append((not is_index, index, 0, group))
            seg = segmentations.get(frame.key)
            segment = _segment_group(frame, seg, tracking, algorithm, site) if seg is not None else None
            if segment is not None:  # right after its outline: OHIF merges groups of one Tracking UID
                groups.append((not is_index, index, 1, segment))
                linked[str(seg.SOPInstanceUID)] = seg
    groups.sort(key=lambda g: g[:3])
    if not groups and views:
        groups.append((False, 0, 0, _finding_group(views, result, study_uid)))
    library = _library_images(views, evidence)
    return _document([g[-1] for g in groups], library, result, study_uid, evidence + list(linked.values()),
                     [f.key for f in frames] or [study_uid], profile, calibration_state(views, result))


def build_notice_sr(result: StudyResult, study_uid: str, evidence: list[Dataset], image: Dataset | None,
                    profile: str = "tid1500") -> Dataset:
    """The report of a study with no usable image: it says "not analysed: <reason>" (`result.finding`),
    names the algorithm, and lists what was received as its evidence, so the absence of a result is
    never ambiguous. `image`: a received image (header) the one group outlines whole, so a viewer that
    shows only outlined groups (OHIF) shows the report; None: a TID 1501 group without ROI."""
    if profile not in ("tid1500", "ohif"):
        raise ValueError(f"LLNM_SR_PROFILE={profile!r}: expected 'tid1500' or 'ohif'")
    site = [hd.sr.FindingSite(codes.lobe_code(laterality(image) if image is not None else None))]
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid(study_uid, str(image.SOPInstanceUID) if image is not None else study_uid,
                         "thyroid", 1, result),
        identifier=GLAND_TRACKING_ID)
    common = {"tracking_identifier": tracking, "finding_type": codes.THYROID,
              "finding_category": codes.ANATOMICAL_STRUCTURE, "finding_sites": site,
              "algorithm_id": algorithm_id(result)}
    region = _whole_image(image) if image is not None else None
    if region is not None:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)
    else:
        image = None
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    group[0].ContentSequence.append(_text(codes.FINDING, result.finding))
    group[0].ContentSequence.append(_text(codes.COMMENT, RESEARCH_USE_STATEMENT))
    sources = sorted(str(ds.SOPInstanceUID) for ds in evidence) or [study_uid]
    return _document([group], [image] if image is not None else [], result, study_uid, evidence, sources,
                     profile, None)


def _document(groups: list, library: list[Dataset], result: StudyResult, study_uid: str, evidence: list[Dataset],
              sources: list[str], profile: str, calibrated: bool | None) -> Dataset:
    """The TID 1500 document around `groups`: observer context (this algorithm as a device), the image
    library, the Qualitative Evaluations container; Comprehensive 3D SR with deterministic UIDs."""
    versions = versions_key(result)
    observer = hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(result), name=ALGORITHM_NAME,
            manufacturer_name=MANUFACTURER, model_name=f"{ALGORITHM_NAME} {__version__}"),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=DIAGNOSTIC_ULTRASONOGRAPHY,
        imaging_measurements=groups,
        referenced_images=_current_classes(library)[0] or None,
    )
    report[0].ContentSequence.append(_qualitative_container(result, calibrated))
    stand_ins, real_classes = _current_classes(evidence)
    sr = hd.sr.Comprehensive3DSR(
        evidence=stand_ins,
        content=report[0],
        series_instance_uid=output_series_uid("SR", study_uid, versions),
        series_number=SERIES_NUMBER["SR"],
        sop_instance_uid=output_instance_uid("SR" if profile == "tid1500" else "SR-ohif", study_uid, sources,
                                             versions),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        record_evidence=True,
    )
    _restore_classes(sr, real_classes)
    sr.CodingSchemeIdentificationSequence = Sequence([codes.coding_scheme_identification()])
    add_common(sr, result, "Measurement Report")
    if profile == "ohif":
        from llnm.dicom import sr_ohif

        sr = sr_ohif.apply(_plain(sr))
    return sr


def _current_classes(evidence: list[Dataset]) -> tuple[list[Dataset], dict[str, str]]:
    """The evidence with retired SOP classes replaced by their current equivalents (copies: the source
    headers keep their class), and {SOP Instance UID: real SOP class} to put back (`_restore_classes`)
    once highdicom has built the SR."""
    out, real = [], {}
    for ds in evidence:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in CURRENT_CLASS:
            # not copy.copy(ds): it shares pydicom's element dict, and the source header would change too
            stand_in = Dataset()
            for elem in ds:
                stand_in.add(elem)
            stand_in.add_new("SOPClassUID", "UI", CURRENT_CLASS[sop_class])
            real[str(ds.SOPInstanceUID)] = sop_class
            ds = stand_in
        out.append(ds)
    return out, real


def _restore_classes(ds: Dataset, real: dict[str, str]) -> None:
    """Every reference (evidence, image library, regions) to an instance of `real` names its real class."""
    if not real:
        return
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in real and "ReferencedSOPClassUID" in item:
                item.ReferencedSOPClassUID = real[uid]
            _restore_classes(item, real)


def nodule_segment(seg: Dataset) -> tuple[int, list[int]] | None:
    """(segment number, SEG frame numbers) of the nodule in a SEG as written (whatever the numbering or
    segmentation type), from its SegmentSequence and per-frame Segment Identification; a SEG whose
    frames carry no Segment Identification (a label map) holds every segment in every frame."""
    nodule = (codes.NODULE.value, codes.NODULE.scheme_designator)
    number = next((int(s.SegmentNumber) for s in seg.get("SegmentSequence", []) or []
                   if any((c.CodeValue, c.CodingSchemeDesignator) == nodule
                          for c in s.get("SegmentedPropertyTypeCodeSequence", []) or [])), None)
    if number is None:
        return None
    per_frame = list(seg.get("PerFrameFunctionalGroupsSequence", []) or [])
    frames = [i for i, item in enumerate(per_frame, start=1)
              if any(int(s.ReferencedSegmentNumber) == number
                     for s in item.get("SegmentIdentificationSequence", []) or [])]
    if not frames:
        frames = list(range(1, int(seg.get("NumberOfFrames", 1) or 1) + 1))
    return number, frames


def _segment_group(frame: AnalysedFrame, seg: Dataset, tracking: hd.sr.TrackingIdentifier,
                   algorithm: hd.sr.AlgorithmIdentification, site: list[hd.sr.FindingSite]
                   ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1410 group whose ROI is the nodule's segment in `seg` (Referenced Segmentation Frame, DCM
    121214: the SEG instance and segment number) on the analysed source image and frame (Source Image
    for Segmentation, DCM 121233)."""
    found = nodule_segment(seg)
    if found is None:
        return None
    number, seg_frames = found
    ref = frame.ref
    source = hd.sr.SourceImageForSegmentation(
        referenced_sop_class_uid=ref.sop_class_uid, referenced_sop_instance_uid=ref.sop_instance_uid,
        referenced_frame_numbers=[ref.frame_number] if ref.frame_number is not None else None)
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
        frame_number=seg_frames[0], segment_number=number, source_image=source)
    for item in segment:
        # Image Reference Macro (PS3.3 C.18.3.1): Referenced Segment Number only where no Referenced Frame
        # Number is given (dciodvfy: an Error with both). The segment names its frame(s) in the SEG.
        for reference in item.get("ReferencedSOPSequence", []) or []:
            if "ReferencedSegmentNumber" in reference and "ReferencedFrameNumber" in reference:
                del reference.ReferencedFrameNumber
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=segment, finding_type=codes.NODULE,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, finding_sites=site, algorithm_id=algorithm)
    group[0].ContentSequence.append(_text(codes.COMMENT, RESEARCH_USE_STATEMENT))
    return group


def _whole_image(header: Dataset) -> hd.sr.ImageRegion | None:
    """Closed outline around a whole image (pixel corners; DICOM 2D coordinates, PS3.3 C.18.6.1.2); None
    for a SOP class highdicom has no IOD for: no region then. A retired ultrasound class is given as its
    current one (`_restore_classes` names the real class again)."""
    rows, cols = float(header.Rows), float(header.Columns)
    graphic = np.array([[0.5, 0.5], [cols - 0.5, 0.5], [cols - 0.5, rows - 0.5], [0.5, rows - 0.5], [0.5, 0.5]],
                       dtype=np.float32)
    multi = str(header.SOPClassUID) in MULTIFRAME_SOP_CLASSES and int(header.get("NumberOfFrames", 1) or 1) > 1
    source = hd.sr.SourceImageForRegion(  # a single-frame class's frames cannot be referenced (loading.py)
        referenced_sop_class_uid=CURRENT_CLASS.get(str(header.SOPClassUID), str(header.SOPClassUID)),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        referenced_frame_numbers=[1] if multi else None)
    try:
        return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=graphic,
                                 source_image=source)
    except KeyError:  # highdicom looks the SOP class up in the current standard's IODs
        return None


def _plain(ds: Dataset) -> Dataset:
    """The dataset as plain pydicom items (highdicom content items guard their own structure)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _library_images(views: list[View], evidence: list[Dataset]) -> list[Dataset]:
    """The source instance of every view, once each, in view order."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    out: dict[str, Dataset] = {}
    for view in views:
        uid = getattr(view.source, "sop_instance_uid", None)
        if uid in by_uid:
            out.setdefault(uid, by_uid[uid])
    return list(out.values())


def _finding_group(views: list[View], result: StudyResult, study_uid: str
                   ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """No nodule, or not assessable: one group saying so, outlining the gland found (else the region
    analysed) on the first view, because OHIF needs a SCOORD in every group. A gland the quality gate
    declined (every gland of a not-assessable study) is not outlined: the region analysed is."""
    index = next((i for i, r in enumerate(result.views)
                  if r.gland_mask is not None and r.gland_mask.any() and reportable(result, r)), 0)
    view = views[min(index, len(views) - 1)]
    view_result = result.views[index] if index < len(result.views) else None
    mask = view_result.gland_mask if view_result is not None and view_result.gland_mask is not None else None
    if view_result is not None and not reportable(result, view_result):
        mask = None
    if mask is None or not mask.any():
        mask = np.ones(view.image.shape, dtype=bool)
    source = frame_key(view.source) if isinstance(view.source, FrameRef) else study_uid
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(study_uid, source, "thyroid", 1, result), identifier=GLAND_TRACKING_ID),
        referenced_region=_region(view.source, view, mask),
        finding_type=codes.THYROID,
        finding_category=codes.ANATOMICAL_STRUCTURE,
        finding_sites=[hd.sr.FindingSite(codes.lobe_code(laterality(view.source.header)))],
        algorithm_id=algorithm_id(result),
    )
    group[0].ContentSequence.append(_text(codes.FINDING, result.finding))
    group[0].ContentSequence.append(_text(codes.COMMENT, RESEARCH_USE_STATEMENT))
    return group


def _qualitative_container(result: StudyResult, calibrated: bool | None) -> hd.sr.ContainerContentItem:
    """Finding, spatial calibration (`calibrated`, llnm.dicom.common.calibration_state; absent when no
    view was analysed) and the research-use statement, then the quality gate's declines."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=CONTAINS)
    items = [_text(codes.FINDING, result.finding)]
    if calibrated is not None:
        items.append(hd.sr.CodeContentItem(name=codes.CALIBRATION,
                                           value=codes.CALIBRATED if calibrated else codes.UNCALIBRATED,
                                           relationship_type=CONTAINS))
    items.append(_text(codes.COMMENT, RESEARCH_USE_STATEMENT))
    for number, view_result in enumerate(result.views, start=1):  # the quality gate's declines
        reason = view_declined(view_result)
        if reason is not None:
            items.append(_text(codes.COMMENT, f"view {number} not used: {reason.text}"))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
