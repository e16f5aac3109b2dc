"""Issue 17 item 6, "a radiologist must see that the AI looked": a study with no usable image (only Doppler
frames, an unsupported SOP class in an ultrasound study) gets a short SR and key image that say "not
analysed: <reason>" with the algorithm's identity and what was received as evidence; a study with no
nodule says "no nodule found". Every object is listed in summary.json, dciodvfy finds no Error and no
Warning but the declared private coding scheme, and nothing says "uncalibrated" about a calibrated view."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from llnm import ALGORITHM_NAME, __version__
from llnm.dicom import codes
from llnm.dicom.key_image import banner_lines
from llnm.dicom.patient import sr_text
from llnm.predict import predict_paths, write_output
from tests.dicom.conftest import dciodvfy, declined_result, drawn_result

CALIBRATED_REGION = {"x0": 5, "y0": 4, "x1": 154, "y1": 115, "dx": 0.005, "dy": 0.005}
DOPPLER_REGION = {"x0": 5, "y0": 4, "x1": 154, "y1": 115, "type": 2}  # RegionDataType 2: colour flow
ENHANCED_US_VOLUME = "1.2.840.10008.5.1.4.1.1.6.2"  # a SOP class the worker does not analyse
#: the only dciodvfy warning allowed: our private coding scheme, declared in CodingSchemeIdentificationSequence
DECLARED = "Unrecognized defined term <99LLNM>"
MODELS = {"nodule_seg": "aa11", "thyroid_seg": "bb22", "text_encoder": "cc33", "tmdl": "dd44"}  # drawn_result's


class ServedModels:
    """A backend that serves drawn_result's models (their hashes only): a notice names the same algorithm."""

    def has_model(self, name: str) -> bool:
        return name in MODELS

    def model_version(self, name: str) -> str:
        return MODELS[name]




def _run(tmp_path: Path, settings, files: list[Path], analyse=None, backend=ServedModels()):
    """Predict and write; returns (output, summary.json, {type: [dataset as written]}, folder)."""
    (output,) = predict_paths(files, backend=backend, settings=settings,
                              analyse=analyse or (lambda s, b: pytest.fail("no image should reach the pipeline")))
    folder = write_output(output, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    kinds: dict[str, list[Dataset]] = {}
    for obj in summary["objects"]:
        kinds.setdefault(obj["type"], []).append(pydicom.dcmread(folder / obj["file"]))
    return output, summary, kinds, folder


def _clean(folder: Path, summary: dict) -> None:
    """Every object written: no dciodvfy Error, no Warning but the declared private scheme."""
    assert {p.name for p in folder.glob("*.dcm")} == {o["file"] for o in summary["objects"]}
    for obj in summary["objects"]:
        errors, warnings = dciodvfy(folder / obj["file"])
        assert errors == [], (obj["type"], errors)
        assert [w for w in warnings if DECLARED not in w] == [], (obj["type"], warnings)


def _evidence(sr: Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}


def _qualitative(sr: Dataset) -> list[Dataset]:
    return list(next(i for i in sr.ContentSequence
                     if i.ConceptNameCodeSequence[0].CodeValue == "C0034375").ContentSequence)


def _check_notice(output, summary, kinds, folder, received: set[str], reason: str) -> None:
    finding = f"not analysed: {reason}"
    assert summary["status"] == "no usable image" and summary["finding"] == finding
    assert summary["assessable"] is False and summary["probability"] is None
    assert summary["not_assessable"] == {"code": "no_image", "reason": reason}
    assert sorted(kinds) == ["SC", "SR"], "a notice is an SR and a key image, never a SEG"
    (sr,) = kinds["SR"]
    text = sr_text(sr)
    assert finding in text and "Research use only" in text
    assert "ncalibrated" not in text, "nothing was measured: no calibration is stated"
    assert codes.CALIBRATION.value not in {i.ConceptNameCodeSequence[0].CodeValue for i in _qualitative(sr)}
    assert _evidence(sr) == received, "the evidence is what was received"
    report = hd.sr.srread(folder / f"{sr.SOPInstanceUID}.dcm")
    assert {str(i.TextValue) for i in _walk(sr) if _concept(i) == "111001"} == {ALGORITHM_NAME}  # Algorithm Name
    assert {str(i.TextValue) for i in _walk(sr) if _concept(i) == "111003"} == {__version__}  # Algorithm Version
    (context,) = report.content.get_observer_contexts(observer_type=dcm_codes.DCM.Device)
    assert context.observer_identifying_attributes.name == ALGORITHM_NAME
    (sc,) = kinds["SC"]
    assert finding in sc.ImageComments and sc.BurnedInAnnotation == "NO"
    assert "SourceImageSequence" not in sc  # nothing of the received pixels is shown
    pixels = sc.pixel_array
    assert pixels.any() and (pixels[..., 0] > 200).any()  # white text, and the red research-use line
    _clean(folder, summary)


def _walk(ds: Dataset):
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _walk(item)


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence") or []
    return str(seq[0].CodeValue) if seq else ""


def _device(tmp_path: Path, sr: Dataset) -> str:
    path = tmp_path / "device.dcm"
    sr.save_as(path, enforce_file_format=True)
    (context,) = hd.sr.srread(path).content.get_observer_contexts(observer_type=dcm_codes.DCM.Device)
    return str(context.observer_identifying_attributes.uid)


def test_doppler_only_study_gets_a_not_analysed_notice(settings, us_factory, tmp_path):
    doppler = us_factory("doppler.dcm", regions=[DOPPLER_REGION])
    output, summary, kinds, folder = _run(tmp_path, settings, [tmp_path / "doppler.dcm"])
    _check_notice(output, summary, kinds, folder, {doppler.SOPInstanceUID},
                  "no B-mode greyscale frame in the study (Doppler or colour only)")
    (sr,) = kinds["SR"]
    report = hd.sr.srread(folder / f"{sr.SOPInstanceUID}.dcm")
    (group,) = report.content.get_planar_roi_measurement_groups()  # a viewer that shows outlines shows it
    assert group.get_measurements() == [] and group.finding_type.value == codes.THYROID.value
    ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == doppler.SOPInstanceUID
    assert group.roi.value[:, 0].max() == pytest.approx(159.5)  # the whole received image: nothing analysed
    # the same algorithm as in the objects of an analysed study: the same device
    us_factory("bmode.dcm", regions=[CALIBRATED_REGION])
    (analysed,) = predict_paths([tmp_path / "bmode.dcm"], backend=ServedModels(), settings=settings,
                                analyse=lambda s, b: drawn_result(s))
    analysed_sr = next(d for d in analysed.datasets if d.Modality == "SR")
    assert _device(tmp_path, analysed_sr) == _device(tmp_path, sr)


def test_a_doppler_image_of_a_retired_class_is_outlined_under_its_real_class(settings, us_factory, tmp_path):
    """Ultrasound Image Storage (retired): highdicom has no IOD for it, the notice outlines it all the same."""
    retired = "1.2.840.10008.5.1.4.1.1.6"
    doppler = us_factory("doppler.dcm", regions=[DOPPLER_REGION], sop_class=retired)
    output, summary, kinds, folder = _run(tmp_path, settings, [tmp_path / "doppler.dcm"])
    (sr,) = kinds["SR"]
    (region,) = [i for i in _walk(sr) if i.ValueType == "SCOORD"]
    (ref,) = [r for image in region.ContentSequence for r in image.ReferencedSOPSequence]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID) == (doppler.SOPInstanceUID, retired)
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert [str(i.ReferencedSOPClassUID) for s in study.ReferencedSeriesSequence
            for i in s.ReferencedSOPSequence] == [retired]
    _clean(folder, summary)


def test_unsupported_sop_class_in_a_us_study_gets_a_not_analysed_notice(settings, us_factory, tmp_path):
    volume = us_factory("volume.dcm", sop_class=ENHANCED_US_VOLUME)
    output, summary, kinds, folder = _run(tmp_path, settings, [tmp_path / "volume.dcm"])
    assert any("ignored" in w and ENHANCED_US_VOLUME in w for w in summary["warnings"])
    _check_notice(output, summary, kinds, folder, {volume.SOPInstanceUID}, "no ultrasound image in the study")
    (sr,) = kinds["SR"]
    report = hd.sr.srread(folder / f"{sr.SOPInstanceUID}.dcm")
    assert report.content.get_planar_roi_measurement_groups() == []  # no image to outline: TID 1501
    (group,) = report.content.get_image_measurement_groups()
    assert group.tracking_identifier and group.tracking_uid


def test_the_notice_is_the_same_objects_when_run_again(settings, us_factory, tmp_path):
    us_factory("doppler.dcm", regions=[DOPPLER_REGION])
    first = _run(tmp_path / "1", settings, [tmp_path / "doppler.dcm"])[0]
    second = _run(tmp_path / "2", settings, [tmp_path / "doppler.dcm"])[0]
    assert [str(d.SOPInstanceUID) for d in first.datasets] == [str(d.SOPInstanceUID) for d in second.datasets]


def test_key_images_off_leaves_the_notice_sr(settings, us_factory, tmp_path):
    us_factory("doppler.dcm", regions=[DOPPLER_REGION])
    _, summary, kinds, _ = _run(tmp_path, dataclasses.replace(settings, key_images=False), [tmp_path / "doppler.dcm"])
    assert sorted(kinds) == ["SR"] and len(summary["objects"]) == 1


@pytest.mark.parametrize("profile", ["tid1500", "ohif"])
def test_the_notice_sr_in_both_profiles_is_valid(profile, settings, us_factory, tmp_path):
    us_factory("doppler.dcm", regions=[DOPPLER_REGION])
    _, summary, kinds, folder = _run(tmp_path, dataclasses.replace(settings, sr_profile=profile),
                                     [tmp_path / "doppler.dcm"])
    (sr,) = kinds["SR"]
    hd.sr.srread(folder / f"{sr.SOPInstanceUID}.dcm").content.get_planar_roi_measurement_groups()
    _clean(folder, summary)


# -- no nodule found; and not assessable: what is said about calibration -------------------------------
@pytest.mark.parametrize("case", ["no-nodule", "not-assessable"])
def test_no_nodule_and_not_assessable_never_call_a_calibrated_view_uncalibrated(case, settings, us_factory,
                                                                                tmp_path):
    """The pipeline leaves StudyResult.calibrated False when it measured nothing (no index view): the
    objects must still say the view was calibrated, and the no-nodule key image says no more than that."""
    us_factory("a.dcm", regions=[CALIBRATED_REGION], ImageLaterality="R")

    def analyse(study, backend):
        result = drawn_result(study, nodule=False) if case == "no-nodule" else declined_result(study)
        return dataclasses.replace(result, calibrated=False)

    output, summary, kinds, folder = _run(tmp_path, settings, [tmp_path / "a.dcm"], analyse=analyse)
    finding = "no nodule found" if case == "no-nodule" else summary["finding"]
    assert summary["status"] == "ok" and summary["calibrated"] is True
    (sr,) = kinds["SR"]
    text = sr_text(sr)
    assert finding in text and "ncalibrated" not in text
    calibration = [i for i in _qualitative(sr) if _concept(i) == codes.CALIBRATION.value]
    assert [str(i.ConceptCodeSequence[0].CodeValue) for i in calibration] == [codes.CALIBRATED.value]
    assert len(kinds["SC"]) == 1
    lines = banner_lines(output.result)
    assert not any("uncalibrated" in line for line in lines)
    assert lines[0] == f"{ALGORITHM_NAME}: {finding}"
    assert ("SEG" in kinds) == (case == "no-nodule")  # the gland of a good image; nothing declined
    _clean(folder, summary)


def test_a_notice_references_an_image_whose_class_is_only_in_the_file_meta(settings, us_factory, tmp_path):
    """The reader accepts a SOP Class UID given only as MediaStorageSOPClassUID; the notice's evidence
    names such an image too, under that class, instead of leaving it out."""
    doppler = us_factory("doppler.dcm", regions=[DOPPLER_REGION])
    ds = pydicom.dcmread(tmp_path / "doppler.dcm")
    del ds.SOPClassUID
    ds.save_as(tmp_path / "doppler.dcm")
    output, summary, kinds, folder = _run(tmp_path, settings, [tmp_path / "doppler.dcm"])
    (sr,) = kinds["SR"]
    assert _evidence(sr) == {doppler.SOPInstanceUID}
    classes = {str(i.ReferencedSOPClassUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
               for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert classes == {str(doppler.file_meta.MediaStorageSOPClassUID)}
