"""`llnm predict` and predict_paths on phantom studies and on broken input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from llnm.predict import predict_paths, write_output
from tests.dicom.conftest import dciodvfy_errors, drawn_analyse, make_us, real_file

REPO = Path(__file__).resolve().parents[2]


def _phantom(out: Path, studies: int = 1, seed: int = 3) -> Path:
    pytest.importorskip("llnm.phantom", reason="phantom generator not available")
    from llnm.cli import main

    assert main(["phantom", "--out", str(out), "--studies", str(studies), "--seed", str(seed),
                 "--rows", "300", "--cols", "400"]) == 0
    return out


def test_phantom_crop_is_exactly_the_truth_image(tmp_path):
    """The reader's crop equals the phantom's truth PNG (region bounds inclusive)."""
    from PIL import Image

    from llnm.dicom.loading import read_studies

    root = _phantom(tmp_path / "ph", studies=2)
    studies, orphans = read_studies([root])
    assert orphans == [] and len(studies) == 2
    for study in studies:
        assert study.report_text and study.sex in ("M", "F") and study.age_years is not None
        assert len(study.views) == 2
        for view in study.views:
            truth = np.asarray(Image.open(root / "truth" / "images" / f"{view.source.sop_instance_uid}.png"))
            assert np.array_equal(view.image, truth)
            assert view.spacing_mm is not None


@pytest.mark.slow
def test_phantom_predict_writes_valid_objects(tmp_path, settings):
    root = _phantom(tmp_path / "ph", studies=1)
    (output,) = predict_paths([root], backend=None, settings=settings, analyse=drawn_analyse)
    assert output.summary["calibrated"] is True and output.summary["inputs"] == {
        "sex_known": True, "age_known": True, "report": True}
    folder = write_output(output, tmp_path / "out")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == len(output.datasets) == 5  # 2 SEG, 1 SR, 2 key images
    for path in files:
        assert dciodvfy_errors(path) == []


def test_cli_predict_writes_the_study_folder(tmp_path, monkeypatch, capsys):
    """`llnm predict` plumbing (paths, grouping, files, exit code) with the drawn analyser."""
    import llnm.predict
    from llnm.cli import main

    monkeypatch.setattr(llnm.predict, "_default_analyse", lambda: drawn_analyse)
    monkeypatch.setenv("LLNM_DATA_DIR", str(tmp_path / "var"))
    study_uid = generate_uid()
    make_us(tmp_path / "in" / "a.dcm", study_uid=study_uid, regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    code = main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-key-images"])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["study_uid"] == study_uid and line["status"] == "ok" and line["objects"] == 2
    summary = json.loads((tmp_path / "out" / study_uid / "summary.json").read_text())
    for key in ("study_uid", "probability", "risk_level", "capsule_distance_mm", "nodule_size_mm", "location",
                "contributions", "calibrated", "warnings", "objects"):
        assert key in summary
    assert {o["type"] for o in summary["objects"]} == {"SEG", "SR"}
    for obj in summary["objects"]:
        ds = pydicom.dcmread(tmp_path / "out" / study_uid / obj["file"])
        assert str(ds.SOPInstanceUID) == obj["sop_instance_uid"]
    assert main(["predict", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("failing", ["an object", "summary.json"])
def test_a_write_that_fails_never_leaves_a_summary_naming_objects_that_are_not_there(tmp_path, settings,
                                                                                      monkeypatch, failing):
    """A full disk while another result of the study replaces the first: summary.json still describes one
    whole result whose objects are all in the folder (here the first), and the next write leaves the new one."""
    import errno

    import llnm.predict
    from tests.dicom.conftest import drawn_result

    make_us(tmp_path / "in" / "a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    (first,) = predict_paths([tmp_path / "in"], backend=None, settings=settings, analyse=drawn_analyse)
    (second,) = predict_paths([tmp_path / "in"], backend=None, settings=settings,
                              analyse=lambda study, backend: drawn_result(study, probability=0.25))
    first_files, second_files = ({o["file"] for o in output.summary["objects"]} for output in (first, second))
    assert not first_files & second_files  # another result: other UIDs
    folder = write_output(first, tmp_path / "out")
    real, written = llnm.predict.write_durably, []

    def full_disk(path, data):
        if (path.name == "summary.json") if failing == "summary.json" else len(written) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(llnm.predict, "write_durably", full_disk)
    with pytest.raises(OSError):
        write_output(second, tmp_path / "out")
    summary = json.loads((folder / "summary.json").read_text())
    on_disk = {p.name for p in folder.glob("*.dcm")}
    assert {o["file"] for o in summary["objects"]} <= on_disk, "summary.json names objects that are not there"
    assert summary["probability"] == first.summary["probability"] and summary["objects"] == first.summary["objects"]
    for obj in summary["objects"]:  # each is the object summary.json describes
        assert str(pydicom.dcmread(folder / obj["file"]).SOPInstanceUID) == obj["sop_instance_uid"]
    monkeypatch.setattr(llnm.predict, "write_durably", real)
    write_output(second, tmp_path / "out")  # the next write leaves the new result alone
    assert {p.name for p in folder.iterdir()} == second_files | {"summary.json"}
    assert json.loads((folder / "summary.json").read_text())["probability"] == second.summary["probability"]


def test_cli_predict_goes_on_after_a_study_it_cannot_write_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    import errno

    import llnm.predict
    from llnm.cli import main

    monkeypatch.setattr(llnm.predict, "_default_analyse", lambda: drawn_analyse)
    monkeypatch.setenv("LLNM_DATA_DIR", str(tmp_path / "var"))
    failing, other = sorted([generate_uid(), generate_uid()])  # the failing study comes first
    for uid in (failing, other):
        make_us(tmp_path / "in" / f"{uid}.dcm", study_uid=uid, regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    real = llnm.predict.write_durably

    def full_disk(path, data):
        if path.parent.name == failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(llnm.predict, "write_durably", full_disk)
    code = main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-key-images"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{failing}: failed: OSError: No space left on device" in captured.err
    (line,) = [json.loads(x) for x in captured.out.strip().splitlines()]
    assert line["study_uid"] == other and line["status"] == "ok"
    assert (tmp_path / "out" / other / "summary.json").is_file()
    assert not (tmp_path / "out" / failing / "summary.json").exists()


def test_broken_files_are_reported_and_the_rest_of_the_study_is_processed(tmp_path, settings):
    study_uid = generate_uid()
    folder = tmp_path / "study"
    good = make_us(folder / "good.dcm", study_uid=study_uid, regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    # truncated: header intact, pixel data cut short
    make_us(folder / "truncated.dcm", study_uid=study_uid)
    data = (folder / "truncated.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 5000])
    # no pixel data
    ds = make_us(folder / "nopixels.dcm", study_uid=study_uid)
    del ds.PixelData
    ds.save_as(folder / "nopixels.dcm", enforce_file_format=True)
    # wrong SOP class (RT Plan) and non-US modality (CT)
    make_us(folder / "rtplan.dcm", study_uid=study_uid, sop_class="1.2.840.10008.5.1.4.1.1.481.5", modality="RTPLAN")
    make_us(folder / "ct.dcm", study_uid=study_uid, sop_class="1.2.840.10008.5.1.4.1.1.2", modality="CT")
    # unsupported transfer syntax (MPEG-4 video)
    ds = make_us(folder / "video.dcm", study_uid=study_uid)
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x00\x01fake h264 stream"])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    ds.save_as(folder / "video.dcm", enforce_file_format=True)
    # not DICOM at all, claiming to be
    (folder / "garbage.dcm").write_bytes(b"\x00" * 64 + b"not dicom")
    (folder / "notes.txt").write_text("ignored quietly")

    outputs = predict_paths([folder], backend=None, settings=settings, analyse=drawn_analyse)
    (output,) = outputs
    warnings = "\n".join(output.summary["warnings"])
    uid_of = {name: str(pydicom.dcmread(folder / name, stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))
              for name in ("truncated.dcm", "nopixels.dcm", "rtplan.dcm", "ct.dcm", "video.dcm")}
    assert f"instance {uid_of['truncated.dcm']} skipped: pixel data cannot be decoded" in warnings
    assert f"instance {uid_of['nopixels.dcm']} skipped: no pixel data" in warnings
    assert f"instance {uid_of['rtplan.dcm']} ignored" in warnings
    assert f"instance {uid_of['ct.dcm']} ignored: modality CT is not US" in warnings
    assert f"instance {uid_of['video.dcm']} ignored: unsupported transfer syntax" in warnings
    assert "garbage.dcm: not a readable DICOM file" in warnings
    assert "notes.txt" not in warnings
    # only the good image was analysed, and everything written refers to it alone
    assert [v["sop_instance_uid"] for v in output.summary["views"]] == [good.SOPInstanceUID]
    assert output.summary["status"] == "ok" and len(output.datasets) == 3
    for ds in output.datasets:
        text = str(ds)
        for name, uid in uid_of.items():
            assert uid not in text, f"{name} leaked into {ds.Modality}"


def _two_images_one_without(tmp_path, settings, keyword: str):
    """A study of two images, the second saved without `keyword`, through predict_paths: (good, other, output)."""
    study_uid = generate_uid()
    region = [{"x0": 0, "y0": 0, "x1": 159, "y1": 119}]
    good = make_us(tmp_path / "in" / "a.dcm", study_uid=study_uid, regions=region, InstanceNumber=1)
    other = make_us(tmp_path / "in" / "b.dcm", study_uid=study_uid, regions=region, InstanceNumber=2)
    ds = pydicom.dcmread(tmp_path / "in" / "b.dcm")
    delattr(ds, keyword)
    ds.save_as(tmp_path / "in" / "b.dcm")
    (output,) = predict_paths([tmp_path / "in"], backend=None, settings=settings, analyse=drawn_analyse)
    return good, other, output


def test_an_image_whose_class_is_only_in_the_file_meta_is_analysed(tmp_path, settings):
    """No SOPClassUID in the dataset, MediaStorageSOPClassUID in the file meta (as classify reads it): the
    image is analysed with the other, and what is written names its class."""
    good, meta_only, output = _two_images_one_without(tmp_path, settings, "SOPClassUID")
    assert output.summary["status"] == "ok"
    assert sorted(v["sop_instance_uid"] for v in output.summary["views"]) == sorted(
        [good.SOPInstanceUID, meta_only.SOPInstanceUID])
    assert not [w for w in output.summary["warnings"] if "skipped" in w]
    (sr,) = [ds for ds in output.datasets if ds.Modality == "SR"]
    assert (meta_only.SOPInstanceUID, meta_only.file_meta.MediaStorageSOPClassUID, None) in _references(sr)
    folder = write_output(output, tmp_path / "out")
    for ds in output.datasets:
        assert dciodvfy_errors(folder / f"{ds.SOPInstanceUID}.dcm") == [], ds.Modality


def test_an_image_without_rows_is_skipped_with_a_warning_and_the_other_analysed(tmp_path, settings):
    """An error the reader did not foresee (here int(Rows) of a header without Rows) loses that image, with
    the usual warning naming its SOP Instance UID, never the study."""
    good, no_rows, output = _two_images_one_without(tmp_path, settings, "Rows")
    assert output.summary["status"] == "ok"
    assert [v["sop_instance_uid"] for v in output.summary["views"]] == [good.SOPInstanceUID]
    assert f"instance {no_rows.SOPInstanceUID} skipped: it cannot be read (AttributeError)" in output.summary["warnings"]
    assert len(output.datasets) == 3  # SEG, SR and key image of the good one


def test_study_without_usable_image_writes_a_notice_and_no_seg(tmp_path, settings):
    shutil.copy(real_file("US1_UNCR.dcm"), tmp_path / "doppler.dcm")
    (output,) = predict_paths([tmp_path / "doppler.dcm"], backend=None, settings=settings,
                              analyse=lambda s, b: pytest.fail("must not analyse"))
    assert output.result is None  # nothing was analysed (the worker audits it as such)
    assert output.summary["status"] == "no usable image"
    assert output.summary["finding"].startswith("not analysed: no B-mode")
    assert any("no B-mode" in w for w in output.summary["warnings"])
    folder = write_output(output, tmp_path / "out")
    assert sorted(o["type"] for o in output.summary["objects"]) == ["SC", "SR"]  # tests/dicom/test_notice_objects.py
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["summary.json"] + [o["file"] for o in output.summary["objects"]])


@pytest.mark.slow
def test_llnm_predict_with_the_shipped_models(tmp_path):
    """The real pipeline through ONNX Runtime, as a user runs it (skips until the models are built)."""
    repo = REPO / "model_repository"
    needed = ["nodule_seg", "thyroid_seg", "tmdl"]
    if not all((repo / m / "1" / "model.onnx").is_file() for m in needed):
        pytest.skip("segmentation/TMDL models not in model_repository/ yet")
    root = _phantom(tmp_path / "ph", studies=1)
    proc = subprocess.run([sys.executable, "-m", "llnm", "predict", str(root), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "LLNM_DATA_DIR": str(tmp_path / "var"),
                               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (summary_path,) = (tmp_path / "out").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "ok"
    for obj in summary["objects"]:
        assert dciodvfy_errors(summary_path.parent / obj["file"]) == []


def test_logs_carry_uids_never_patient_names(tmp_path, settings, caplog):
    import logging

    make_us(tmp_path / "in" / "a.dcm", PatientName="Secretname^Anna", PatientID="ID-998877",
            regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    (tmp_path / "in" / "broken.dcm").write_bytes(b"DICM" * 10)
    with caplog.at_level(logging.DEBUG):
        (output,) = predict_paths([tmp_path / "in"], backend=None, settings=settings, analyse=drawn_analyse)
        write_output(output, tmp_path / "out")
    assert caplog.records
    assert "Secretname" not in caplog.text and "ID-998877" not in caplog.text
    assert "Secretname" not in json.dumps(output.summary)


def test_the_same_instance_twice_is_used_once(tmp_path, settings):
    make_us(tmp_path / "a.dcm", regions=[{"x0": 0, "y0": 0, "x1": 159, "y1": 119}])
    shutil.copy(tmp_path / "a.dcm", tmp_path / "copy.dcm")
    (output,) = predict_paths([tmp_path], backend=None, settings=settings, analyse=drawn_analyse)
    assert len(output.summary["views"]) == 1 and len(output.datasets) == 3
    assert any("received twice" in w for w in output.summary["warnings"])


RETIRED_US_IMAGE = "1.2.840.10008.5.1.4.1.1.6"
RETIRED_US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3"


def _references(ds) -> set[tuple[str, str, int | None]]:
    """(ReferencedSOPInstanceUID, ReferencedSOPClassUID, ReferencedFrameNumber) of every reference in `ds`."""
    found = set()
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            if "ReferencedSOPInstanceUID" in item and "ReferencedSOPClassUID" in item:
                frame = item.get("ReferencedFrameNumber")
                found.add((str(item.ReferencedSOPInstanceUID), str(item.ReferencedSOPClassUID),
                           int(frame) if frame is not None else None))
            found |= _references(item)
    return found


def test_retired_ultrasound_classes_get_seg_and_sr_naming_their_real_class(tmp_path, settings):
    """Ultrasound Image Storage (retired) single-frame and Multi-frame (retired) cine: highdicom has no IOD
    for them; SEG and SR are written all the same and every reference names the source's real class."""
    root = _phantom(tmp_path / "ph", studies=1)
    (study,) = [p for p in root.iterdir() if p.is_dir() and p.name != "truth"]
    single, cine = sorted(study.glob("US_*.dcm"))
    ds = pydicom.dcmread(single)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RETIRED_US_IMAGE
    ds.save_as(single)
    ds = pydicom.dcmread(cine)
    ds.PixelData = np.stack([ds.pixel_array] * 3).tobytes()
    ds.NumberOfFrames, ds.FrameTime, ds.FrameIncrementPointer = 3, 33.3, pydicom.tag.Tag("FrameTime")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RETIRED_US_MULTIFRAME
    ds.save_as(cine)
    real = {str(pydicom.dcmread(p).SOPInstanceUID): c for p, c in
            ((single, RETIRED_US_IMAGE), (cine, RETIRED_US_MULTIFRAME))}

    (output,) = predict_paths([study], backend=None, settings=settings, analyse=drawn_analyse)
    assert output.summary["status"] == "ok" and len(output.summary["views"]) == 2
    segs = [ds for ds in output.datasets if ds.Modality == "SEG"]
    (sr,) = [ds for ds in output.datasets if ds.Modality == "SR"]
    assert len(segs) == 2
    for seg in segs:
        refs = {r for r in _references(seg) if r[0] in real}
        (uid,) = {r[0] for r in refs}  # one SEG per source frame
        assert {r[1] for r in refs} == {real[uid]}
        if real[uid] == RETIRED_US_MULTIFRAME:
            assert {r[2] for r in refs} - {None} == {2}  # the cine's analysed frame (the middle one)
    sr_refs = {r for r in _references(sr) if r[0] in real}
    assert {r[0] for r in sr_refs} == set(real)
    assert all(r[1] == real[r[0]] for r in sr_refs)
    evidence = {str(item.ReferencedSOPInstanceUID): str(item.ReferencedSOPClassUID)
                for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study_item.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {uid: evidence[uid] for uid in real} == real
    folder = write_output(output, tmp_path / "out")
    # dciodvfy does not count the retired Multi-frame class as multi-frame: its frame number is an "Error" there
    not_multiframe = "Shall not be present for Referenced SOP Class that is not multi-frame"
    for ds in output.datasets:
        errors = dciodvfy_errors(folder / f"{ds.SOPInstanceUID}.dcm")
        if any(r[1] == RETIRED_US_MULTIFRAME for r in _references(ds)):
            errors = [e for e in errors if not_multiframe not in e]
        assert errors == [], ds.Modality
