"""Issue 17 item 5 at the worker: a study processed again reaches a real Orthanc as the same objects, and a
changed result arrives with its predecessor reference and an IOCM rejection note of the superseded
objects; a destination that does not accept Key Object Selection documents gets everything else and the
study still ends done (the note is not retried for ever). The pipeline is a stand-in (results given)."""

from __future__ import annotations

import dataclasses
import io
import shutil

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from support import free_port, standin_write_output
from test_service_worker import NoBackend, _spool_study, orthanc  # noqa: F401  (the module's Orthanc)

from llnm import audit as A
from llnm.dicom.supersede import KEY_OBJECT_SELECTION
from llnm.predict import predict_paths
from llnm.worker.process import StudyWorker, run_process
from tests.dicom.conftest import drawn_result

pytestmark = pytest.mark.skipif(not shutil.which("Orthanc"), reason="needs Orthanc (scripts/test-services.sh)")


def _predicting(probability: float):
    def analyse(study, backend):
        return dataclasses.replace(drawn_result(study), probability=probability)

    return lambda paths, backend, settings: predict_paths(paths, backend, settings, analyse=analyse)


def _worker(settings, probability: float) -> StudyWorker:
    return StudyWorker(settings, NoBackend(), predict=_predicting(probability), write_output=standin_write_output)


def _outbox_bytes(worker: StudyWorker, uid: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in worker.outbox.objects(uid)}


def test_same_result_same_objects_then_a_new_result_supersedes_the_old_in_orthanc(make_settings, tmp_path, orthanc):
    settings = make_settings(destinations=orthanc.node)
    uid = _spool_study(settings, tmp_path)
    first = _worker(settings, 0.73)
    assert run_process(first, uid, "t1", 1).action == "done"
    before = {i["SOPInstanceUID"]: i for i in orthanc.study_instances(uid)}
    first_bytes = _outbox_bytes(first, uid)

    assert run_process(_worker(settings, 0.73), uid, "t2", 1).action == "done"  # unchanged inputs
    assert _outbox_bytes(first, uid) == first_bytes  # byte-identical objects, same names
    assert set(i["SOPInstanceUID"] for i in orthanc.study_instances(uid)) == set(before)

    assert run_process(_worker(settings, 0.41), uid, "t3", 1).action == "done"  # a changed result
    after = {i["SOPInstanceUID"]: i for i in orthanc.study_instances(uid)}
    new = {k: v for k, v in after.items() if k not in before}
    (note_uid,) = [k for k, v in new.items() if v["Modality"] == "KO"]
    note = pydicom.dcmread(io.BytesIO(orthanc.instance_file(note_uid)))
    assert str(note.SOPClassUID) == KEY_OBJECT_SELECTION
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    rejected = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in note.ContentSequence
                if "ReferencedSOPSequence" in i}
    assert rejected == set(before)  # every object of the first result, nothing of the new one
    (old_sr,) = [k for k, v in before.items() if v["Modality"] == "SR"]
    (new_sr,) = [k for k, v in new.items() if v["Modality"] == "SR"]
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(new_sr)))
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == old_sr
    events = [e["event"] for e in first.audit.events(uid)]
    assert events.count("result") == 3 and first.audit.study(uid)["state"] == A.DONE


class StorageSCP:
    """A real pynetdicom Storage SCP that supports every storage SOP class but `refused` (default: Key Object
    Selection)."""

    def __init__(self, refused: tuple[str, ...] = (KEY_OBJECT_SELECTION,)) -> None:
        self.port = free_port()
        self.received: list[str] = []
        ae = AE(ae_title="NOKOS")
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax not in refused:
                ae.add_supported_context(cx.abstract_syntax)
        self.ae = ae

    def _store(self, event) -> int:
        self.received.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    def __enter__(self) -> "StorageSCP":
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


def test_a_destination_without_kos_support_gets_the_new_result_and_the_study_ends_done(make_settings, tmp_path):
    with StorageSCP() as scp:
        settings = make_settings(destinations=f"NOKOS@127.0.0.1:{scp.port}")
        uid = _spool_study(settings, tmp_path)
        worker = _worker(settings, 0.73)
        assert run_process(worker, uid, "t1", 1).action == "done"
        first = len(scp.received)
        assert run_process(_worker(settings, 0.41), uid, "t2", 1).action == "done"
        assert len(scp.received) == 2 * first and KEY_OBJECT_SELECTION not in scp.received
        assert worker.audit.study(uid)["state"] == A.DONE
        refused = [e for e in worker.audit.events(uid) if e["event"] == "rejection note not accepted"]
        assert [e["destination"] for e in refused] == [f"NOKOS@127.0.0.1:{scp.port}"]
        assert not worker.outbox.pending(uid, worker.nodes[0])


def test_any_other_refused_object_is_still_a_failure(make_settings, tmp_path):
    """Only the rejection note may be left out: a destination refusing the SEG keeps the study sending."""
    with StorageSCP(refused=(KEY_OBJECT_SELECTION, "1.2.840.10008.5.1.4.1.1.66.4")) as scp:  # + SEG Storage
        settings = make_settings(destinations=f"NOKOS@127.0.0.1:{scp.port}", send_max_retries=0)
        uid = _spool_study(settings, tmp_path)
        worker = _worker(settings, 0.73)
        run_process(worker, uid, "t1", 1)
        row = worker.audit.study(uid)
        assert row["state"] == A.FAILED and "not yet stored" in (row["error"] or ""), row
