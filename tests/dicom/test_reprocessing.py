"""Issue 17 item 5: processing a study again. The same result gives byte-identical objects (the creation
time of the first run is kept); a changed result names the SR it replaces (PredecessorDocumentsSequence)
and adds an IHE IOCM rejection note (KOS "Rejected for Quality Reasons") for every superseded object,
and processing that changed result again gives the same note and the same bytes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from llnm.dicom.classify import classify_instance
from llnm.dicom.supersede import KEY_OBJECT_SELECTION, REJECTED_FOR_QUALITY_REASONS, ResultRecord, succeed_output
from llnm.predict import predict_paths, write_output
from tests.dicom.conftest import dciodvfy_errors, drawn_result, real_file

FIRST = dt.datetime(2026, 3, 1, 9, 30, 0).astimezone()
LATER = dt.datetime(2026, 3, 20, 16, 5, 0).astimezone()


def _run(settings, probability: float, prior: ResultRecord | None, now: dt.datetime):
    """One run of the study through the writers, with the models stood in (result given)."""
    def analyse(study, backend):
        return dataclasses.replace(drawn_result(study), probability=probability)

    (output,) = predict_paths([real_file("examples_palette.dcm")], backend=None, settings=settings, analyse=analyse)
    record = succeed_output(output, prior, now)
    return output, record


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _by_uid(output) -> dict[str, bytes]:
    return {str(ds.SOPInstanceUID): _bytes(ds) for ds in output.datasets}


def _round_trip(record: ResultRecord) -> ResultRecord:
    """Through JSON, as summary.json and the audit trail keep it."""
    again = ResultRecord.from_dict(json.loads(json.dumps(record.as_dict())))
    assert again == record
    return again


def test_the_same_result_again_gives_identical_bytes_with_the_first_creation_time(settings):
    first, record = _run(settings, 0.73, None, FIRST)
    again, record_again = _run(settings, 0.73, _round_trip(record), LATER)
    assert _by_uid(again) == _by_uid(first)
    assert record_again == record
    assert not any(ds.Modality == "KO" for ds in again.datasets)
    for ds in again.datasets:
        assert ds.ContentDate == FIRST.strftime("%Y%m%d") and ds.InstanceCreationTime == "093000"


def test_a_first_run_is_stamped_with_its_own_time_not_another(settings):
    a, _ = _run(settings, 0.73, None, FIRST)
    b, _ = _run(settings, 0.73, None, LATER)
    assert {ds.ContentDate for ds in a.datasets} == {"20260301"}
    assert {ds.ContentDate for ds in b.datasets} == {"20260320"}


def _references(note: Dataset) -> set[str]:
    return {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for item in note.ContentSequence if "ReferencedSOPSequence" in item}


def _evidence(note: Dataset) -> set[str]:
    return {str(sop.ReferencedSOPInstanceUID) for study in note.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}


def test_a_changed_result_references_its_predecessor_and_rejects_every_superseded_object(settings, tmp_path):
    old, old_record = _run(settings, 0.73, None, FIRST)
    new, new_record = _run(settings, 0.41, _round_trip(old_record), LATER)
    old_uids = set(_by_uid(old))
    assert not old_uids & {str(ds.SOPInstanceUID) for ds in new.datasets}  # a new result has new UIDs

    (note,) = [ds for ds in new.datasets if ds.Modality == "KO"]
    assert str(note.SOPClassUID) == KEY_OBJECT_SELECTION
    assert note.StudyInstanceUID == old.datasets[0].StudyInstanceUID
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == (REJECTED_FOR_QUALITY_REASONS.value, "DCM")
    assert _references(note) == old_uids == _evidence(note)
    kinds = {str(item.ValueType) for item in note.ContentSequence if "ReferencedSOPSequence" in item}
    assert kinds == {"IMAGE", "COMPOSITE"}  # SEG and key image as images, the SR as a composite
    hd.ko.KeyObjectSelectionDocument.from_dataset(note)  # highdicom reads it back as a KOS

    (old_sr,) = [ds for ds in old.datasets if ds.Modality == "SR"]
    (new_sr,) = [ds for ds in new.datasets if ds.Modality == "SR"]
    (study,) = new_sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == old_sr.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old_sr.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert (sop.ReferencedSOPInstanceUID, sop.ReferencedSOPClassUID) == (old_sr.SOPInstanceUID, old_sr.SOPClassUID)
    assert {o.sop_instance_uid for o in new_record.supersedes} == old_uids

    for ds in (note, new_sr):
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], ds.Modality
        # routed back to the listener with the rest of the study, it is ours: it never reopens the study
        assert classify_instance(pydicom.dcmread(path)) == "own_output", ds.Modality


def test_the_changed_result_processed_again_keeps_its_note_and_bytes(settings):
    _, old_record = _run(settings, 0.73, None, FIRST)
    new, new_record = _run(settings, 0.41, old_record, LATER)
    again, again_record = _run(settings, 0.41, _round_trip(new_record), LATER + dt.timedelta(days=3))
    assert _by_uid(again) == _by_uid(new)
    assert again_record.supersedes == new_record.supersedes


def test_a_third_result_rejects_the_second_not_the_first_again(settings):
    first, r1 = _run(settings, 0.73, None, FIRST)
    second, r2 = _run(settings, 0.41, r1, LATER)
    third, _ = _run(settings, 0.22, r2, LATER + dt.timedelta(days=1))
    (note,) = [ds for ds in third.datasets if ds.Modality == "KO"]
    second_result = {str(ds.SOPInstanceUID) for ds in second.datasets if ds.Modality != "KO"}
    assert _references(note) == second_result
    (sr,) = [ds for ds in third.datasets if ds.Modality == "SR"]
    (second_sr,) = [ds for ds in second.datasets if ds.Modality == "SR"]
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == second_sr.SOPInstanceUID


def test_summary_json_keeps_the_record_and_lists_the_note(settings, tmp_path):
    old, old_record = _run(settings, 0.73, None, FIRST)
    folder = write_output(old, tmp_path)
    kept = ResultRecord.from_dict(json.loads((folder / "summary.json").read_text()))
    assert kept == old_record
    new, _ = _run(settings, 0.41, kept, LATER)
    folder = write_output(new, tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert [o["type"] for o in summary["objects"]].count("KO") == 1
    assert {o["sop_instance_uid"] for o in summary["supersedes"]} == set(_by_uid(old))
    on_disk = {p.name for p in folder.glob("*.dcm")}
    assert on_disk == {o["file"] for o in summary["objects"]}  # the old objects are gone, the note is there
    assert pydicom.dcmread(folder / [o["file"] for o in summary["objects"] if o["type"] == "KO"][0]).Modality == "KO"


@pytest.mark.parametrize("broken", [None, {}, {"created": "not a time", "objects": []},
                                    {"created": "2026-03-01T09:30:00+00:00", "objects": [{"type": "SR"}]}])
def test_an_unreadable_record_is_no_record(broken):
    assert ResultRecord.from_dict(broken) is None
