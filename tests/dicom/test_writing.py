"""Writing: SEG, TID 1500 SR and key image, on studies read from real and synthetic files, with masks
drawn where the pipeline would put them. dciodvfy must find no error in anything we write."""

from __future__ import annotations

import dataclasses
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as dcm_codes

from llnm import MANUFACTURER, __version__
from llnm.dicom import classify_instance, codes, is_own_output
from llnm.dicom.patient import sr_text
from llnm.predict import predict_paths, write_output
from tests.dicom.conftest import (
    ALL_REAL,
    BMODE_FILES,
    OUTSIDE_TEXT,
    dciodvfy_errors,
    declined_quality,
    declined_result,
    drawn_analyse,
    drawn_result,
    read,
    real_file,
)


#: the outline groups (TID 1410 Image Region); each has a second group linking its SEG segment
IMAGE_REGION = dcm_codes.DCM.ImageRegion


def _predict(paths, settings, analyse=drawn_analyse):
    return predict_paths(paths, backend=None, settings=settings, analyse=analyse)


def _by_type(output):
    out = {}
    for ds in output.datasets:
        out.setdefault({"SEG": "SEG", "SR": "SR"}.get(ds.Modality, "SC"), []).append(ds)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_REAL)
def test_real_file_predict_writes_objects_that_dciodvfy_accepts(name, settings, tmp_path):
    (output,) = _predict([real_file(name)], settings)
    folder = write_output(output, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["study_uid"] == output.study_uid
    kinds = _by_type(output)
    if name not in BMODE_FILES:  # a notice: the SR and key image say "not analysed", no SEG, no number
        assert summary["status"] == "no usable image" and summary["warnings"]
        assert set(kinds) == {"SR", "SC"} and summary["probability"] is None
        assert summary["finding"].startswith("not analysed: ")
    else:
        assert set(kinds) == {"SEG", "SR", "SC"}
    assert len(summary["objects"]) == len(output.datasets)
    source = read(real_file(name))
    theirs = [f'"{source.get(k)}"' for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    for ds in output.datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        assert path.is_file()
        errors = [e for e in dciodvfy_errors(path) if not ("Illegal root for UID" in e and any(u in e for u in theirs))]
        assert errors == [], f"{ds.Modality} of {name}"  # the source's own UIDs aside (color-pl: "999.999...")


def test_seg_keeps_what_ohif_needs_and_references_the_cine_frame(settings, us_factory, tmp_path):
    cine = np.full((5, 60, 80), 90, np.uint8)
    cine[2] = np.random.default_rng(1).integers(0, 255, (60, 80), dtype=np.uint8)
    source = us_factory("cine.dcm", pixel=cine, regions=[{"x0": 5, "y0": 4, "x1": 74, "y1": 55}])
    (output,) = _predict([tmp_path / "cine.dcm"], settings)
    (seg,) = _by_type(output)["SEG"]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" in shared, "OHIF crashes on a SEG without PixelMeasuresSequence"
    assert "PlaneOrientationSequence" in shared, "OHIF fails to load a SEG without PlaneOrientationSequence"
    assert list(shared.PixelMeasuresSequence[0].PixelSpacing) == pytest.approx([0.1, 0.1])
    assert "PatientOrientation" in seg and seg.PatientOrientation in ("", None)
    assert seg.Rows == 60 and seg.Columns == 80
    refs = [item for frame in seg.PerFrameFunctionalGroupsSequence
            for d in frame.DerivationImageSequence for item in d.SourceImageSequence]
    assert {(r.ReferencedSOPInstanceUID, r.ReferencedSOPClassUID, int(r.ReferencedFrameNumber)) for r in refs} == {
        (source.SOPInstanceUID, source.SOPClassUID, 3)}
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == ["Thyroid nodule", "Thyroid gland"]
    nodule, gland = seg.SegmentSequence
    assert nodule.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.NODULE.value
    assert nodule.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE.value
    assert nodule.AnatomicRegionSequence[0].CodeValue == codes.THYROID.value
    assert gland.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.THYROID.value
    # the masks land in the source frame where the view was cut from
    view = output.result.views[0]
    pixels = np.asarray(seg.pixel_array)
    assert pixels.shape[0] == 2  # one frame per segment
    expected = np.zeros((60, 80), bool)
    expected[4:56, 5:75] = view.nodule_mask
    assert np.array_equal(pixels[0].astype(bool), expected)
    assert dciodvfy_errors(_save(seg, tmp_path)) == []


def _save(ds, tmp_path):
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_sr_round_trip_gives_the_numbers_of_summary_json(settings, us_factory, tmp_path):
    us_factory("a.dcm", regions=[{"x0": 10, "y0": 8, "x1": 149, "y1": 111, "dx": 0.005, "dy": 0.005}],
               ImageLaterality="R")
    (output,) = _predict([tmp_path / "a.dcm"], settings)
    folder = write_output(output, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    (sr_ds,) = _by_type(output)["SR"]
    sr = hd.sr.srread(folder / f"{sr_ds.SOPInstanceUID}.dcm")
    groups = sr.content.get_planar_roi_measurement_groups(reference_type=IMAGE_REGION)  # + its SEG link
    assert len(groups) == 1
    group = groups[0]
    values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values["Long axis"] == (pytest.approx(summary["nodule_size_mm"]["length"]), "mm")
    assert values["Short axis"] == (pytest.approx(summary["nodule_size_mm"]["width"]), "mm")
    assert [m.name.meaning for m in group.get_measurements()][:3] == [
        codes.LLNM_PROBABILITY.meaning, codes.LLNM_RISK.meaning, codes.CAPSULE_DISTANCE.meaning]
    assert values[codes.LLNM_RISK.meaning] == (3.0, "{high}")  # OHIF shows NUM items only: the word is the unit
    assert values[codes.CAPSULE_DISTANCE.meaning] == (pytest.approx(summary["capsule_distance_mm"]), "mm")
    assert values[codes.LLNM_PROBABILITY.meaning][0] / 100 == pytest.approx(summary["probability"], abs=1e-9)
    for name, share in summary["contributions"].items():
        assert values[codes.contribution_code(name).meaning][0] / 100 == pytest.approx(share, abs=1e-9)
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    assert evaluations[codes.LLNM_RISK_LEVEL.meaning] == "High risk"
    assert summary["risk_level"] == 3 and summary["risk_label"] == "high"
    assert group.tracking_uid and group.tracking_identifier == "Nodule 1"  # names the finding, not the result
    assert group.finding_type.value == codes.NODULE.value
    assert group.finding_sites[0].value.value == codes.RIGHT_LOBE.value
    region = group.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    data = region.value
    assert np.allclose(data[0], data[-1])  # closed outline
    # the outline lies within the region the view was cut from (offset applied)
    assert data[:, 0].min() >= 10 and data[:, 0].max() <= 150 and data[:, 1].min() >= 8
    assert summary["calibrated"] is True
    assert "Research use only" in sr_text(sr_ds)
    assert [o["sop_instance_uid"] for o in summary["objects"]] == [str(d.SOPInstanceUID) for d in output.datasets]


def test_uncalibrated_study_reports_pixels_and_says_so(settings, us_factory, tmp_path):
    us_factory("a.dcm")
    (output,) = _predict([tmp_path / "a.dcm"], settings)
    s = output.summary
    assert s["calibrated"] is False and s["capsule_distance_mm"] is None and s["nodule_size_mm"] is None
    assert s["capsule_distance_px"] == 7.25
    assert any("uncalibrated" in w for w in s["warnings"])
    (sr_ds,) = _by_type(output)["SR"]
    sr = hd.sr.srread(_save(sr_ds, tmp_path))
    (group,) = sr.content.get_planar_roi_measurement_groups(reference_type=IMAGE_REGION)
    units = {m.name.meaning: m.unit.value for m in group.get_measurements()}
    assert units[codes.CAPSULE_DISTANCE.meaning] == "{pixels}"
    evaluations = {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()}
    assert evaluations[codes.CALIBRATION.meaning] == codes.UNCALIBRATED.meaning
    (seg,) = _by_type(output)["SEG"]
    assert "uncalibrated" in seg.ContentDescription
    for ds in output.datasets:
        assert dciodvfy_errors(_save(ds, tmp_path)) == []


def test_reprocessing_gives_the_same_uids_and_a_new_model_gives_new_ones(settings, us_factory, tmp_path):
    us_factory("a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    first = _predict([tmp_path / "a.dcm"], settings)[0]
    second = _predict([tmp_path / "a.dcm"], settings)[0]
    uids = [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in first.datasets]
    assert uids == [(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in second.datasets]
    assert first.summary["probability"] == second.summary["probability"]
    out = tmp_path / "out"
    write_output(first, out)
    folder = write_output(second, out)
    assert len(list(folder.glob("*.dcm"))) == len(first.datasets)  # replaced, not piled up

    def newer_model(study, backend):
        result = drawn_result(study)
        return dataclasses.replace(result, model_versions={**result.model_versions, "tmdl": "ee55"})

    third = _predict([tmp_path / "a.dcm"], settings, analyse=newer_model)[0]
    assert not {u for _, u in uids} & {str(d.SOPInstanceUID) for d in third.datasets}

    def late_report(study, backend):  # same models, another answer: a PACS must not keep the old copy
        result = drawn_result(study)
        return dataclasses.replace(result, probability=(result.probability or 0.5) / 2)

    fourth = _predict([tmp_path / "a.dcm"], settings, analyse=late_report)[0]
    assert not {u for _, u in uids} & {str(d.SOPInstanceUID) for d in fourth.datasets}
    folder = write_output(fourth, out)  # the folder holds the new answer only
    assert {p.stem for p in folder.glob("*.dcm")} == {str(d.SOPInstanceUID) for d in fourth.datasets}


def test_every_object_is_labelled_ours_and_research_only(settings, us_factory, tmp_path):
    source = us_factory("a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    (output,) = _predict([tmp_path / "a.dcm"], settings)
    assert len(output.datasets) == 3
    for ds in output.datasets:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
        assert "RESEARCH USE ONLY" in ds.SeriesDescription
        ours = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == MANUFACTURER]
        assert len(ours) == 1
        versions = list(ours[0].SoftwareVersions)
        assert versions[0] == f"llnm {__version__}" and "tmdl dd44" in versions
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert is_own_output(ds) and classify_instance(ds) == "own_output"
        reread = pydicom.dcmread(_save(ds, tmp_path))
        assert classify_instance(reread) == "own_output"


def test_key_images_can_be_switched_off(settings, us_factory, tmp_path):
    us_factory("a.dcm")
    off = dataclasses.replace(settings, key_images=False)
    (output,) = _predict([tmp_path / "a.dcm"], off)
    assert set(_by_type(output)) == {"SEG", "SR"}


def test_key_image_shows_contours_and_heatmap_below_a_banner(settings, us_factory, tmp_path):
    us_factory("a.dcm", pixel=np.full((120, 160), 60, np.uint8))
    (output,) = _predict([tmp_path / "a.dcm"], settings)
    (sc,) = _by_type(output)["SC"]
    pixels = sc.pixel_array
    assert pixels.shape[1] == 160 and pixels.shape[0] > 120 and pixels.shape[2] == 3
    frame = pixels[:120]
    yellow = (frame[..., 0] > 200) & (frame[..., 1] > 200) & (frame[..., 2] < 50)
    cyan = (frame[..., 0] < 50) & (frame[..., 1] > 200) & (frame[..., 2] > 200)
    assert yellow.sum() > 20 and cyan.sum() > 20
    assert (pixels[120:] > 0).any()  # the banner has text
    assert "Research use only" in sc.ImageComments
    assert dciodvfy_errors(_save(sc, tmp_path)) == []


def test_no_nodule_found_still_reports_and_writes_the_gland(settings, us_factory, tmp_path):
    us_factory("a.dcm")
    (output,) = _predict([tmp_path / "a.dcm"], settings, analyse=lambda s, b: drawn_result(s, nodule=False))
    kinds = _by_type(output)
    (seg,) = kinds["SEG"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Thyroid gland"]
    (sr_ds,) = kinds["SR"]
    sr = hd.sr.srread(_save(sr_ds, tmp_path))
    (group,) = sr.content.get_planar_roi_measurement_groups()  # OHIF needs a SCOORD in every group
    assert group.finding_type.value == codes.THYROID.value and group.get_measurements() == []
    assert group.roi.value.shape[0] > 3  # the gland outline
    assert "no nodule found" in sr_text(sr_ds)
    assert output.summary["probability"] is None and output.summary["finding"] == "no nodule found"
    for ds in output.datasets:
        assert dciodvfy_errors(_save(ds, tmp_path)) == []


def test_two_views_share_one_tracking_uid(settings, tmp_path):
    (output,) = _predict([real_file("gdcm-US-ALOKA-16.dcm")], settings)
    (sr_ds,) = _by_type(output)["SR"]
    sr = hd.sr.srread(_save(sr_ds, tmp_path))
    groups = sr.content.get_planar_roi_measurement_groups(reference_type=IMAGE_REGION)
    assert len(groups) == 2
    assert groups[0].tracking_uid == groups[1].tracking_uid
    assert len(groups[0].get_measurements()) > 0 and groups[1].get_measurements() == []
    (seg,) = _by_type(output)["SEG"]  # both views are on the same frame: one SEG holding both
    assert np.asarray(seg.pixel_array)[0][:, :320].any() and np.asarray(seg.pixel_array)[0][:, 320:].any()


@pytest.mark.parametrize("right, spacing", [
    ({"units": 0}, None),  # the second region uncalibrated
    ({"dx": 0.016, "dy": 0.016}, None),  # another PhysicalDelta
    ({}, [0.1, 0.1]),  # the same calibration: the SEG states it
])
def test_a_dual_display_seg_states_a_spacing_only_when_its_regions_share_it(settings, us_factory, tmp_path,
                                                                             right, spacing):
    us_factory("dual.dcm", regions=[{"x0": 0, "y0": 0, "x1": 79, "y1": 119},
                                    {"x0": 80, "y0": 0, "x1": 159, "y1": 119, **right}])
    (output,) = _predict([tmp_path / "dual.dcm"], settings)
    assert len(output.summary["views"]) == 2
    (seg,) = _by_type(output)["SEG"]  # both views on one frame: one SEG, masks in both halves
    pixels = np.asarray(seg.pixel_array)[0]
    assert pixels[:, :80].any() and pixels[:, 80:].any()
    stated = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    if spacing is None:  # never the first region's spacing for the whole frame: the nominal, and said so
        assert stated == [1.0, 1.0] and "uncalibrated, PixelSpacing 1 x 1 nominal" in seg.ContentDescription
    else:
        assert stated == pytest.approx(spacing) and "uncalibrated" not in seg.ContentDescription
    assert dciodvfy_errors(_save(seg, tmp_path)) == []


def test_classify_instance_decisions(us_factory, tmp_path):
    assert classify_instance(us_factory("a.dcm")) == "image"
    assert classify_instance(us_factory("b.dcm", modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2")
                             ).startswith("ignored:")
    sc = us_factory("c.dcm", sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert classify_instance(sc) == "image"
    sc.Modality = "OT"
    assert classify_instance(sc).startswith("ignored:")
    mpeg = us_factory("d.dcm")
    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    assert classify_instance(mpeg) == "ignored:unsupported transfer syntax 1.2.840.10008.1.2.4.102"
    report = us_factory("e.dcm", sop_class="1.2.840.10008.5.1.4.1.1.88.11", modality="SR")
    assert classify_instance(report) == "report"
    report.Manufacturer = MANUFACTURER
    assert classify_instance(report) == "report"  # Basic Text SR is never ours
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    assert classify_instance(report) == "own_output"


def test_nothing_found_writes_the_sr_and_key_image_but_no_seg(settings, us_factory, tmp_path):
    from llnm.study import StudyResult, ViewResult

    us_factory("a.dcm")

    def nothing(study, backend):
        return StudyResult(study_uid=study.study_uid, finding="no nodule found", probability=None,
                           risk_level=None, views=[ViewResult(None, None) for _ in study.views])

    (output,) = _predict([tmp_path / "a.dcm"], settings, analyse=nothing)
    kinds = _by_type(output)
    assert set(kinds) == {"SR", "SC"}
    (sr_ds,) = kinds["SR"]
    sr = hd.sr.srread(_save(sr_ds, tmp_path))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert group.roi.value[:, 0].max() == pytest.approx(159.5)  # around the whole region (pixel centres)
    for ds in output.datasets:
        assert dciodvfy_errors(_save(ds, tmp_path)) == []


def test_ohif_sr_profile_is_valid_and_has_its_own_uid(settings, us_factory, tmp_path):
    from llnm.dicom import sr_ohif

    us_factory("a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    (strict,) = _by_type(_predict([tmp_path / "a.dcm"], settings)[0])["SR"]
    (ohif,) = _by_type(_predict([tmp_path / "a.dcm"], dataclasses.replace(settings, sr_profile="ohif"))[0])["SR"]
    assert ohif.SOPInstanceUID != strict.SOPInstanceUID
    assert ohif.file_meta.MediaStorageSOPInstanceUID == ohif.SOPInstanceUID
    assert sr_ohif.OHIF_POLYLINE_TRACKING_ID in sr_text(ohif)
    assert dciodvfy_errors(_save(ohif, tmp_path)) == []
    with pytest.raises(ValueError):
        _predict([tmp_path / "a.dcm"], dataclasses.replace(settings, sr_profile="fancy"))


# -- the quality gate's "not assessable": the reason everywhere, no number, no SEG -------------------------
def _valid(datasets, tmp_path) -> None:
    """dciodvfy finds no error (checked where dciodvfy is installed, and always in CI)."""
    import os
    import shutil

    if shutil.which("dciodvfy") is None and os.environ.get("CI", "").lower() != "true":
        return
    for ds in datasets:
        assert dciodvfy_errors(_save(ds, tmp_path)) == [], ds.Modality


NUMBER_KEYS = ("probability", "risk_level", "risk_label", "capsule_distance_mm", "capsule_distance_px",
               "nodule_size_mm", "nodule_size_px", "index_view")


@pytest.mark.parametrize("keep_numbers", [False, True], ids=["as-the-pipeline-gives", "numbers-left-behind"])
def test_not_assessable_writes_the_reason_and_no_number_and_no_seg(settings, us_factory, tmp_path, keep_numbers):
    us_factory("a.dcm", pixel=np.full((120, 160), 60, np.uint8))
    (output,) = _predict([tmp_path / "a.dcm"], settings,
                         analyse=lambda s, b: declined_result(s, keep_numbers=keep_numbers))
    folder = write_output(output, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["assessable"] is False
    assert summary["not_assessable"] == {"code": "nodule_outside_gland", "reason": OUTSIDE_TEXT}
    assert summary["finding"] == f"not assessable: {OUTSIDE_TEXT}"
    assert {k: summary[k] for k in NUMBER_KEYS} == dict.fromkeys(NUMBER_KEYS)
    assert summary["contributions"] == {} and summary["risk_probabilities"] == [] and summary["location"] == {}
    (view,) = summary["views"]
    assert view["used"] is False
    assert view["quality"] == {"reasons": ["nodule_outside_gland"], "nodule_inside_gland": 0.1,
                               "solidity": 0.9712, "nodule_area_share": 0.0234, "gland_area_share": 0.3312}
    assert any(OUTSIDE_TEXT in w for w in summary["warnings"])

    kinds = _by_type(output)
    assert set(kinds) == {"SR", "SC"}, "a mask the quality gate declined must not be written as a SEG"
    assert sorted(o["type"] for o in summary["objects"]) == ["SC", "SR"]

    (sr_ds,) = kinds["SR"]
    text = sr_text(sr_ds)
    assert f"not assessable: {OUTSIDE_TEXT}" in text and f"view 1 not used: {OUTSIDE_TEXT}" in text
    for concept in (codes.LLNM_PROBABILITY, codes.LLNM_RISK, codes.CAPSULE_DISTANCE, codes.LENGTH, codes.WIDTH,
                    codes.LLNM_RISK_LEVEL):
        assert concept.meaning not in text
    assert "share" not in text.lower()  # no contribution share
    sr = hd.sr.srread(folder / f"{sr_ds.SOPInstanceUID}.dcm")
    (group,) = sr.content.get_planar_roi_measurement_groups()
    assert group.get_measurements() == [] and group.finding_type.value == codes.THYROID.value
    assert group.tracking_identifier == "Thyroid gland"  # the reason is in the content, not the identifier
    xy = group.roi.value  # the region analysed, not the declined gland outline
    assert xy[:, 0].min() == pytest.approx(0.5) and xy[:, 0].max() == pytest.approx(159.5)

    (sc,) = kinds["SC"]
    pixels = sc.pixel_array
    assert (pixels[:120] == 60).all(), "no outline and no heat map on a not-assessable key image"
    assert (pixels[120:] > 0).any()  # the banner
    assert "not assessable" in sc.ImageComments
    _valid(output.datasets, tmp_path)


def test_key_image_banner_of_a_not_assessable_study_has_the_reason_only(settings, us_factory, tmp_path):
    from llnm.dicom.key_image import banner_lines
    from llnm.study import StudyInput, View

    study = StudyInput("1.2.3", [View(np.zeros((40, 60), np.uint8), (0.1, 0.1))])
    lines = banner_lines(declined_result(study, keep_numbers=True))
    assert lines[0].endswith(f"not assessable: {OUTSIDE_TEXT}")
    assert not any(word in " ".join(lines) for word in ("P(LLNM)", "risk", "capsule", "%  "))
    assert "RESEARCH USE ONLY" in lines[-1]


def test_the_not_assessable_code_changes_the_uids(settings, us_factory, tmp_path):
    from llnm.dicom.common import versions_key

    us_factory("a.dcm")
    (first,) = _predict([tmp_path / "a.dcm"], settings, analyse=lambda s, b: declined_result(s))

    def other_code(study, backend):
        return dataclasses.replace(declined_result(study), not_assessable_code="irregular_mask")

    (second,) = _predict([tmp_path / "a.dcm"], settings, analyse=other_code)
    assert not {str(d.SOPInstanceUID) for d in first.datasets} & {str(d.SOPInstanceUID) for d in second.datasets}
    assert versions_key(first.result) != versions_key(second.result)


def test_a_declined_view_of_an_assessable_study_gets_no_seg_and_no_outline(settings, us_factory, tmp_path):
    from pydicom.uid import generate_uid

    uid = generate_uid()
    us_factory("a.dcm", study_uid=uid, pixel=np.full((120, 160), 60, np.uint8))
    us_factory("b.dcm", study_uid=uid, pixel=np.full((120, 160), 60, np.uint8))

    def second_declined(study, backend):
        result = drawn_result(study)
        result.views[1].used = False
        result.views[1].quality = declined_quality()  # its masks and heat map stay on the view
        result.warnings.append(f"view 2 not used: {OUTSIDE_TEXT}")
        return result

    (output,) = _predict([tmp_path / "a.dcm", tmp_path / "b.dcm"], settings, analyse=second_declined)
    summary = output.summary
    assert summary["assessable"] is True and summary["not_assessable"] is None
    assert summary["probability"] is not None
    assert [v["used"] for v in summary["views"]] == [True, False]
    assert summary["views"][1]["quality"]["reasons"] == ["nodule_outside_gland"]
    used_uid, declined_uid = (v["sop_instance_uid"] for v in summary["views"])
    kinds = _by_type(output)
    (seg,) = kinds["SEG"]
    refs = {str(r.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == {used_uid} and declined_uid not in refs
    (sr_ds,) = kinds["SR"]
    sr = hd.sr.srread(_save(sr_ds, tmp_path))
    (group,) = sr.content.get_planar_roi_measurement_groups(reference_type=IMAGE_REGION)  # the used view's only
    assert str(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == used_uid
    assert f"view 2 not used: {OUTSIDE_TEXT}" in sr_text(sr_ds)
    used_sc, declined_sc = sorted(kinds["SC"], key=lambda d: int(d.InstanceNumber))  # in view order
    assert not (used_sc.pixel_array[:120] == 60).all()
    assert (declined_sc.pixel_array[:120] == 60).all(), "no outline or heat map of a declined view"
    assert declined_sc.pixel_array[120:].any() and declined_sc.Rows > used_sc.Rows  # one more banner line
    _valid(output.datasets, tmp_path)
