"""Issue 17 items 3 and 4: every SR we write, read back with highdicom's TID 1500 parser (srread +
MeasurementReport), in both profiles: each outlined nodule is linked to the nodule segment of the SEG
actually written and to the source image and frame (SR -> SEG segment -> source image), the SEG is in the
evidence, the device observer (TID 1004) is the same for two different studies, and the groups keep their
TID 1410 shape (the ROI in the group; INFERRED FROM only on the numbers measured on the outline)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from llnm.dicom import codes
from llnm.dicom.sr_ohif import OHIF_POLYLINE_TRACKING_ID
from llnm.predict import predict_paths, write_output
from tests.dicom.conftest import dciodvfy_errors, declined_result, drawn_analyse, drawn_result

PROFILES = ("tid1500", "ohif")
IMAGE_REGION = dcm_codes.DCM.ImageRegion
SEGMENTATION_FRAME = dcm_codes.DCM.ReferencedSegmentationFrame
#: NUM items measured on the nodule outline: the only ones INFERRED FROM it (ohif profile)
ON_THE_OUTLINE = {codes.LENGTH.meaning, codes.WIDTH.meaning, codes.CAPSULE_DISTANCE.meaning}
CALIBRATED_REGION = {"x0": 5, "y0": 4, "x1": 154, "y1": 115, "dx": 0.005, "dy": 0.005}


def _written(tmp_path: Path, settings, files: list[Path], analyse=drawn_analyse, profile: str = "tid1500"):
    """Predict, write the study folder, and read back what was written: (SR as highdicom reads it, SR
    dataset, SEG datasets by SOP Instance UID, the output)."""
    (output,) = predict_paths(files, backend=None, settings=dataclasses.replace(settings, sr_profile=profile),
                              analyse=analyse)
    folder = write_output(output, tmp_path / f"out-{profile}")
    read = {str(ds.SOPInstanceUID): pydicom.dcmread(folder / f"{ds.SOPInstanceUID}.dcm") for ds in output.datasets}
    (sr_uid,) = [uid for uid, ds in read.items() if ds.Modality == "SR"]
    segs = {uid: ds for uid, ds in read.items() if ds.Modality == "SEG"}
    return hd.sr.srread(folder / f"{sr_uid}.dcm"), read[sr_uid], segs, output


def _cine_study(us_factory, name: str = "cine.dcm", study_uid: str | None = None) -> Dataset:
    cine = np.full((4, 120, 160), 70, np.uint8)
    cine[2] = np.random.default_rng(3).integers(0, 255, (120, 160), dtype=np.uint8)  # the sharpest frame
    return us_factory(name, pixel=cine, regions=[CALIBRATED_REGION], ImageLaterality="L", study_uid=study_uid)


def _evidence_uids(sr: Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}


def _seg_frame_sources(seg: Dataset, segment: int) -> set[tuple[str, int]]:
    """(source SOP Instance UID, source frame) of the SEG frames that hold `segment`."""
    out = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        numbers = {int(s.ReferencedSegmentNumber) for s in item.get("SegmentIdentificationSequence", [])}
        if numbers and segment not in numbers:
            continue
        for derivation in item.DerivationImageSequence:
            for src in derivation.SourceImageSequence:
                out.add((str(src.ReferencedSOPInstanceUID), int(src.get("ReferencedFrameNumber", 1) or 1)))
    return out


# -- item 3: SR -> SEG segment -> source image ----------------------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_each_outline_links_its_seg_segment_and_the_source_frame(profile, settings, us_factory, tmp_path):
    source = _cine_study(us_factory)
    report, sr, segs, output = _written(tmp_path, settings, [tmp_path / "cine.dcm"], profile=profile)
    (seg,) = segs.values()
    frame = output.summary["views"][0]["frame_number"]
    assert frame == 3  # the analysed frame of the cine, not the first one

    (outline,) = report.content.get_planar_roi_measurement_groups(reference_type=IMAGE_REGION)
    (linked,) = report.content.get_planar_roi_measurement_groups(reference_type=SEGMENTATION_FRAME)
    assert linked.tracking_uid == outline.tracking_uid, "the link names the same finding as the outline"
    assert linked.finding_type.value == codes.NODULE.value and linked.roi is None
    reference = linked.referenced_segmentation_frame
    assert reference.referenced_sop_instance_uid == str(seg.SOPInstanceUID)
    assert reference.referenced_sop_class_uid == str(seg.SOPClassUID)
    (number,) = reference.referenced_segment_numbers
    segment = next(s for s in seg.SegmentSequence if int(s.SegmentNumber) == number)
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.NODULE.value, "the segment is the nodule"
    source_image = reference.source_image_for_segmentation
    assert source_image.referenced_sop_instance_uid == source.SOPInstanceUID
    assert source_image.referenced_frame_numbers == [frame]
    # the same source frame as the outline, and as the SEG frame that holds the segment
    outline_ref = outline.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert (str(outline_ref.ReferencedSOPInstanceUID), int(outline_ref.ReferencedFrameNumber)) == (
        source.SOPInstanceUID, frame)
    assert _seg_frame_sources(seg, number) == {(source.SOPInstanceUID, frame)}
    assert str(seg.SOPInstanceUID) in _evidence_uids(sr), "the SEG is evidence of the report"
    assert source.SOPInstanceUID in _evidence_uids(sr)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (IHE AIR)
    assert dciodvfy_errors(tmp_path / f"out-{profile}" / output.study_uid / f"{sr.SOPInstanceUID}.dcm") == []


@pytest.mark.parametrize("profile", PROFILES)
def test_two_views_of_one_frame_link_the_same_segment(profile, settings, tmp_path):
    from tests.dicom.conftest import real_file

    report, _, segs, _ = _written(tmp_path, settings, [real_file("gdcm-US-ALOKA-16.dcm")], profile=profile)
    (seg,) = segs.values()  # both views are on one frame: one SEG holding both outlines
    groups = report.content.get_planar_roi_measurement_groups()
    assert [g.reference_type for g in groups] == [IMAGE_REGION, SEGMENTATION_FRAME] * 2  # each link after its outline
    outlines, links = groups[0::2], groups[1::2]
    assert {g.referenced_segmentation_frame.referenced_sop_instance_uid for g in links} == {str(seg.SOPInstanceUID)}
    # each link names the finding of the outline before it (OHIF merges groups by Tracking UID)
    assert [g.tracking_uid for g in links] == [g.tracking_uid for g in outlines]
    if profile == "ohif":  # one measurement per outline in OHIF: two UIDs
        assert outlines[0].tracking_uid != outlines[1].tracking_uid
    else:  # one finding seen in two views
        assert outlines[0].tracking_uid == outlines[1].tracking_uid


# -- item 2 read back: one device for two different studies -------------------------------------------
@pytest.mark.parametrize("profile", PROFILES)
def test_device_observer_uid_is_the_same_for_two_different_studies(profile, settings, us_factory, tmp_path):
    _cine_study(us_factory, "a.dcm")
    us_factory("b.dcm", regions=[CALIBRATED_REGION])

    def other_answer(study, backend):
        return dataclasses.replace(drawn_result(study), probability=0.08, risk_level=1)

    first, _, _, out_a = _written(tmp_path / "a", settings, [tmp_path / "a.dcm"], profile=profile)
    second, _, _, out_b = _written(tmp_path / "b", settings, [tmp_path / "b.dcm"], analyse=other_answer,
                                   profile=profile)
    assert out_a.study_uid != out_b.study_uid

    def device(report) -> str:
        (context,) = report.content.get_observer_contexts(observer_type=dcm_codes.DCM.Device)
        return str(context.observer_identifying_attributes.uid)

    assert device(first) == device(second)


# -- item 4: both profiles keep TID 1410 ----------------------------------------------------------------
def _inferred_from(measurement) -> list[Dataset]:
    return [c for c in measurement[0].get("ContentSequence", []) or [] if c.RelationshipType == "INFERRED FROM"]


@pytest.mark.parametrize("profile", PROFILES)
def test_outline_stays_the_group_roi_and_only_its_measurements_are_inferred_from_it(profile, settings,
                                                                                     us_factory, tmp_path):
    us_factory("a.dcm", regions=[CALIBRATED_REGION])
    report, _, _, _ = _written(tmp_path, settings, [tmp_path / "a.dcm"], profile=profile)
    (group,) = report.content.get_planar_roi_measurement_groups(reference_type=IMAGE_REGION)
    assert group.roi is not None and group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    measurements = group.get_measurements()
    names = [m.name.meaning for m in measurements]
    assert {codes.LLNM_PROBABILITY.meaning, codes.LLNM_RISK.meaning} < set(names)
    inferred = {m.name.meaning: _inferred_from(m) for m in measurements}
    if profile == "tid1500":
        assert all(items == [] for items in inferred.values())
        assert group.tracking_identifier == "Nodule 1"
        assert names[0] == codes.LLNM_PROBABILITY.meaning  # OHIF draws the first NUM items beside the outline
        return
    assert group.tracking_identifier == OHIF_POLYLINE_TRACKING_ID
    assert {name for name, items in inferred.items() if items} == ON_THE_OUTLINE
    for name in ON_THE_OUTLINE:
        (scoord,) = inferred[name]
        assert scoord.ValueType == "SCOORD"
        assert np.allclose(np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2), group.roi.value)
    # OHIF's importer reads the outline from the first NUM: it must be one measured on the outline
    assert names[0] in ON_THE_OUTLINE
    first_comment = next(i for i in group[0].ContentSequence
                         if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value)
    assert first_comment.TextValue.startswith("Nodule 1: LLNM risk high, p=73%")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", ["no-nodule", "not-assessable"])
def test_no_nodule_and_not_assessable_reports_read_back(case, profile, settings, us_factory, tmp_path):
    us_factory("a.dcm", regions=[CALIBRATED_REGION])
    analyse = (lambda s, b: drawn_result(s, nodule=False)) if case == "no-nodule" else (
        lambda s, b: declined_result(s))
    report, sr, _, output = _written(tmp_path, settings, [tmp_path / "a.dcm"], analyse=analyse, profile=profile)
    (group,) = report.content.get_planar_roi_measurement_groups()
    assert group.reference_type == IMAGE_REGION and group.get_measurements() == []
    assert group.finding_type.value == codes.THYROID.value
    assert report.content.get_planar_roi_measurement_groups(reference_type=SEGMENTATION_FRAME) == []
    calibration = _qualitative_codes(sr)[codes.CALIBRATION.value]
    assert calibration == codes.CALIBRATED.value, "a calibrated view is never reported as uncalibrated"
    assert output.summary["calibrated"] is True
    assert dciodvfy_errors(tmp_path / f"out-{profile}" / output.study_uid / f"{sr.SOPInstanceUID}.dcm") == []


def test_an_uncalibrated_no_nodule_study_says_so(settings, us_factory, tmp_path):
    us_factory("a.dcm")
    _, sr, _, output = _written(tmp_path, settings, [tmp_path / "a.dcm"],
                                analyse=lambda s, b: drawn_result(s, nodule=False))
    assert _qualitative_codes(sr)[codes.CALIBRATION.value] == codes.UNCALIBRATED.value
    assert output.summary["calibrated"] is False


def _qualitative_codes(sr: Dataset) -> dict[str, str]:
    """CODE items of the report's Qualitative Evaluations container: concept -> value."""
    container = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    return {str(i.ConceptNameCodeSequence[0].CodeValue): str(i.ConceptCodeSequence[0].CodeValue)
            for i in container.ContentSequence if i.ValueType == "CODE"}


@pytest.mark.parametrize("nodule", [False])
def test_ohif_profile_leaves_a_report_without_measurements_as_tid1500(settings, tmp_path, nodule):
    """A report without any NUM (no nodule; notices alike) has outlines and no measurement: claiming OHIF's
    freehand tool for them makes OHIF fail to load the whole report, so it stays exactly TID 1500."""
    import dataclasses as dc

    from llnm.dicom import sr_ohif
    from llnm.predict import predict_paths
    from tests.dicom.conftest import drawn_result, real_file

    def analyse(study, backend):
        return drawn_result(study, nodule=nodule)

    ohif = dc.replace(settings, sr_profile="ohif")
    (strict_out,) = predict_paths([real_file("examples_palette.dcm")], backend=None, settings=settings, analyse=analyse)
    (ohif_out,) = predict_paths([real_file("examples_palette.dcm")], backend=None, settings=ohif, analyse=analyse)
    (strict,) = [d for d in strict_out.datasets if d.Modality == "SR"]
    (laid,) = [d for d in ohif_out.datasets if d.Modality == "SR"]
    groups, strict_groups = sr_ohif.measurement_groups(laid), sr_ohif.measurement_groups(strict)
    assert groups and all(not any(i.ValueType == "NUM" for i in g.ContentSequence) for g in groups)
    assert [g.to_json_dict() for g in groups] == [g.to_json_dict() for g in strict_groups]
    assert sr_ohif.OHIF_POLYLINE_TRACKING_ID not in str(laid)
