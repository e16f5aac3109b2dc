"""Issue 17 item 5 end to end: a study processed twice reaches the PACS (a real Orthanc) as the same
objects; its report arriving late changes the result, and the new SR names the old one as its predecessor
while an IOCM rejection note (KOS, "Rejected for Quality Reasons") lists every superseded object.
Real listener, Celery worker on Redis, Triton when the models exist (else the pipeline stand-in)."""

from __future__ import annotations

import io
import subprocess

import pydicom
import pytest
from support import VENV_BIN, wait_for
from test_e2e_service import phantom, result_objects, storescu, wait_state

from llnm import audit as A

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def _runs_done(stack, uid: str, runs: int, timeout_s: float = 120) -> None:
    """Wait until the study was processed `runs` times and is done again."""
    audit = stack.audit()

    def finished() -> bool:
        events = [e["event"] for e in audit.events(uid)]
        row = audit.study(uid)
        return events.count("result") >= runs and row is not None and row["state"] == A.DONE

    assert wait_for(finished, timeout_s, 0.3), (audit.study(uid), [e["event"] for e in audit.events(uid)])


def _outbox(stack, uid: str) -> dict[str, bytes]:
    from pathlib import Path

    folder = Path(stack.settings_env["LLNM_DATA_DIR"]) / "outbox" / uid
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.dcm"))}


def test_processed_again_same_objects_then_a_late_report_supersedes_them(stack, orthanc, tmp_path):
    stack.listener()
    stack.worker()
    uid, files = phantom(tmp_path / "phantom", seed=21)
    images = [f for f in files if f.name.startswith("US_")]
    (report,) = [f for f in files if f.name == "SR_report.dcm"]
    assert storescu(stack.dicom_port, images).returncode == 0
    wait_state(stack, uid, (A.DONE, A.FAILED))
    _runs_done(stack, uid, 1)
    first = {i["SOPInstanceUID"]: i for i in result_objects(orthanc, uid)}
    first_bytes = _outbox(stack, uid)
    assert first and first_bytes

    run = subprocess.run([str(VENV_BIN / "llnm"), "requeue", uid], env=stack.settings_env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    _runs_done(stack, uid, 2)
    assert _outbox(stack, uid) == first_bytes  # the same inputs: byte-identical objects
    assert set(i["SOPInstanceUID"] for i in result_objects(orthanc, uid)) == set(first)

    assert storescu(stack.dicom_port, [report]).returncode == 0  # the report, late
    _runs_done(stack, uid, 3)
    now = {i["SOPInstanceUID"]: i for i in result_objects(orthanc, uid)}
    new = {k: v for k, v in now.items() if k not in first}
    notes = [k for k, v in new.items() if v["Modality"] == "KO"]
    assert len(notes) == 1, new
    note = pydicom.dcmread(io.BytesIO(orthanc.instance_file(notes[0])))
    assert str(note.SOPClassUID) == KEY_OBJECT_SELECTION and note.ConceptNameCodeSequence[0].CodeValue == "113001"
    rejected = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in note.ContentSequence
                if "ReferencedSOPSequence" in i}
    assert rejected == set(first)
    (old_sr,) = [k for k, v in first.items() if v["Modality"] == "SR"]
    (new_sr,) = [k for k, v in new.items() if v["Modality"] == "SR"]
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(new_sr)))
    ref = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == old_sr
    assert sr.ContentDate >= pydicom.dcmread(io.BytesIO(orthanc.instance_file(old_sr))).ContentDate
