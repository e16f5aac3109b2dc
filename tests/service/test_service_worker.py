"""The worker's mechanics against a real Orthanc: outbox, sending, retries with backoff, dead letter,
requeue, idempotent re-runs, retention, and the embedded `llnm serve` assembly. The pipeline is a
stand-in here (tests/e2e run the real one once trained models exist)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import (Orthanc, free_port, metric, scrape, standin_predict, standin_write_output,
                     wait_for, write_study)

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.listener.app import Listener
from llnm.observability.health import HealthServer, writable_dir_check
from llnm.worker.local import LocalQueue
from llnm.worker.maintenance import apply_retention
from llnm.worker.process import (DeliveryPending, PermanentError, StudyWorker, backoff_s, is_transient,
                                 run_delivery, run_process)
from llnm.worker.requeue import requeue

#: what the real writer makes for a study of two single-frame images: SEG and key image per frame, one SR
RESULT_MODALITIES = ["SEG", "SEG", "SR", "US", "US"]

pytestmark = pytest.mark.skipif(not shutil.which("Orthanc"), reason="needs Orthanc (scripts/test-services.sh)")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()


class NoBackend:
    def infer(self, model, inputs):
        raise AssertionError("the stand-in pipeline runs no model")

    def has_model(self, model):
        return True

    def model_version(self, model):
        return "none"


def _spool_study(settings, tmp_path: Path, per_series: int = 2) -> str:
    """Put a study in the spool as the listener would (and the audit row it makes)."""
    study_uid, paths = write_study(tmp_path / "src", per_series=per_series)
    from llnm.storage.spool import Spool

    spool = Spool(settings.spool_dir, 0)
    import pydicom

    for p in paths:
        ds = pydicom.dcmread(p)
        spool.store(study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID, p.read_bytes())
    AuditTrail.for_data_dir(settings.data_dir).set_state(study_uid, A.QUEUED, calling_ae="MODALITY")
    return study_uid


def _worker(settings, predict=standin_predict) -> StudyWorker:
    return StudyWorker(settings, NoBackend(), predict=predict, write_output=standin_write_output)


def test_backoff_and_fault_kinds():
    assert [backoff_s(2, a) for a in (1, 2, 3)] == [2, 4, 8] and backoff_s(2, 30) == 600
    assert is_transient(ConnectionRefusedError()) and is_transient(DeliveryPending("x"))
    assert not is_transient(PermanentError("x")) and not is_transient(ValueError("bad pixel data"))
    from llnm.inference.backend import ModelNotFound

    assert not is_transient(ModelNotFound("no model"))


def test_results_reach_the_pacs_once_even_when_the_study_runs_again(make_settings, tmp_path, orthanc):
    settings = make_settings(destinations=orthanc.node)
    uid = _spool_study(settings, tmp_path)
    worker = _worker(settings)
    assert run_process(worker, uid, "t1", 1).action == "done"
    instances = orthanc.study_instances(uid)
    assert sorted(i["Modality"] for i in instances) == RESULT_MODALITIES
    assert worker.audit.study(uid)["state"] == A.DONE and worker.audit.study(uid)["probability"] == 0.4242
    sent_events = lambda: [e for e in worker.audit.events(uid) if e["event"] == "sent"]  # noqa: E731
    assert len(sent_events()) == 1
    # a redelivered task (the first run was killed after sending) runs again: nothing is sent twice
    assert run_process(_worker(settings), uid, "t2", 1).action == "done"
    assert len(sent_events()) == 1 and len(orthanc.study_instances(uid)) == len(RESULT_MODALITIES)
    assert not (settings.results_path / uid).exists()  # a PACS is configured and no folder was asked for


def test_pacs_down_then_back_gets_the_results(make_settings, tmp_path, orthanc):
    settings = make_settings(destinations=orthanc.node, network_timeout_s=2)
    uid = _spool_study(settings, tmp_path)
    worker = _worker(settings)
    orthanc.stop()
    try:
        step = run_process(worker, uid, "t1", 1)
        assert step.action == "deliver" and step.attempt == 2 and step.delay_s == settings.send_backoff_s
        row = worker.audit.study(uid)
        assert row["state"] == A.SENDING and row["send_attempts"] == 1
        assert worker.outbox.pending_count(worker.nodes) == len(RESULT_MODALITIES)
        assert run_delivery(worker, uid, 2).action == "deliver"
    finally:
        orthanc.start()
    assert run_delivery(worker, uid, 3).action == "done"
    assert worker.audit.study(uid)["state"] == A.DONE
    assert len(orthanc.study_instances(uid)) == len(RESULT_MODALITIES)
    assert worker.outbox.pending_count(worker.nodes) == 0


def test_delivery_gives_up_into_the_dead_letter_and_requeue_runs_it_again(make_settings, tmp_path, orthanc):
    dead = f"NOBODY@127.0.0.1:{free_port()}"
    settings = make_settings(destinations=dead, send_max_retries=1, network_timeout_s=2)
    uid = _spool_study(settings, tmp_path)
    worker = _worker(settings)
    assert run_process(worker, uid, "t1", 1).action == "deliver"
    assert run_delivery(worker, uid, 2).action == "done"
    row = worker.audit.study(uid)
    assert row["state"] == A.FAILED and "DeliveryPending" in row["error"]
    assert [e["event"] for e in worker.audit.events(uid)][-1] == "dead letter"
    queued, errors = requeue(settings, [], all_failed=True)
    assert queued == [uid] and not errors and worker.audit.study(uid)["state"] == A.QUEUED
    fixed = make_settings(destinations=orthanc.node)
    assert run_process(_worker(fixed), uid, "t2", 1).action == "done"
    assert len(orthanc.study_instances(uid)) == len(RESULT_MODALITIES)
    assert requeue(settings, ["1.2.3.999"])[1]  # nothing spooled: refused with a reason


def test_permanent_failure_dead_letters_at_once_and_transient_retries(make_settings, tmp_path):
    settings = make_settings(task_max_retries=2)
    uid = _spool_study(settings, tmp_path)

    def broken(paths, backend, s):
        raise ValueError("cannot decode")

    assert run_process(_worker(settings, broken), uid, "t", 1).action == "done"
    assert AuditTrail.for_data_dir(settings.data_dir).study(uid)["state"] == A.FAILED

    def flaky(paths, backend, s):
        raise ConnectionRefusedError("triton down")

    worker = _worker(settings, flaky)
    steps = [run_process(worker, uid, "t", attempt) for attempt in (1, 2, 3)]
    assert [(s.action, s.delay_s) for s in steps] == [("process", 0.2), ("process", 0.4), ("done", 0.0)]
    assert worker.audit.study(uid)["state"] == A.FAILED


def test_no_destination_writes_the_results_folder(make_settings, tmp_path):
    settings = make_settings()
    uid = _spool_study(settings, tmp_path)
    assert run_process(_worker(settings), uid, "t", 1).action == "done"
    assert json.loads((settings.results_path / uid / "summary.json").read_text())["probability"] == 0.4242
    assert AuditTrail.for_data_dir(settings.data_dir).study(uid)["state"] == A.DONE


def test_retention_removes_done_studies_and_keeps_failed_ones(make_settings, tmp_path):
    settings = make_settings(retention_hours=1.0)
    done = _spool_study(settings, tmp_path / "a")
    failed = _spool_study(settings, tmp_path / "b")
    audit = AuditTrail.for_data_dir(settings.data_dir)
    audit.set_state(done, A.DONE)
    audit.set_state(failed, A.FAILED)
    assert apply_retention(settings, audit) == []  # too young
    assert apply_retention(settings, audit, now=time.time() + 7200) == [done]
    assert not (settings.spool_dir / done).exists() and (settings.spool_dir / failed).exists()


def test_embedded_serve_assembly_end_to_end(make_settings, tmp_path, orthanc):
    """Listener + embedded queue + worker threads + health server, as `llnm serve` builds them."""
    if not shutil.which("storescu"):
        pytest.skip("needs dcmtk")
    settings = make_settings(destinations=orthanc.node, results_dir=str(tmp_path / "results"))
    audit = AuditTrail.for_data_dir(settings.data_dir)
    worker = StudyWorker(settings, NoBackend(), audit, predict=standin_predict, write_output=standin_write_output)
    queue = LocalQueue(worker, poll_s=0.05).start()
    listener = Listener(settings, queue.enqueue, audit=audit, completion_interval_s=0.05).start()
    health = HealthServer(0, {"spool writable": writable_dir_check(settings.spool_dir)}, host="127.0.0.1",
                          on_scrape=listener.refresh_gauges).start()
    try:
        before = scrape(health.port)
        study_uid, paths = write_study(tmp_path / "in", series=2, per_series=2)
        run = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "LLNM", "127.0.0.1", str(listener.port),
                              *map(str, paths)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert wait_for(lambda: audit.study(study_uid)["state"] == A.DONE, 20)
        assert sorted(i["Modality"] for i in orthanc.study_instances(study_uid)) == ["SEG"] * 4 + ["SR"] + ["US"] * 4
        assert (tmp_path / "results" / study_uid / "summary.json").is_file()
        after = scrape(health.port)
        for name in ("llnm_instances_received_total", "llnm_studies_completed_total",
                     "llnm_studies_processed_total", "llnm_objects_sent_total"):
            assert metric(after, name) > metric(before, name), name
        assert metric(after, "llnm_stage_seconds_count", stage="send") > metric(before, "llnm_stage_seconds_count",
                                                                                 stage="send")
        text = urllib.request.urlopen(f"http://127.0.0.1:{health.port}/metrics").read().decode()
        assert study_uid not in text and "Doe" not in text
        with urllib.request.urlopen(f"http://127.0.0.1:{health.port}/readyz") as r:
            assert json.loads(r.read())["ready"] is True
        assert urllib.request.urlopen(f"http://127.0.0.1:{health.port}/healthz").status == 200
    finally:
        health.stop()
        listener.stop()
        queue.stop()


def test_readyz_fails_with_the_reason(tmp_path):
    def broken():
        raise ConnectionRefusedError("no broker")

    health = HealthServer(0, {"broker": broken}, host="127.0.0.1").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{health.port}/readyz")
        assert err.value.code == 503 and "ConnectionRefusedError" in err.value.read().decode()
    finally:
        health.stop()


def test_embedded_queue_requeues_a_study_interrupted_by_a_crash(make_settings, tmp_path):
    settings = make_settings()
    uid = _spool_study(settings, tmp_path)
    audit = AuditTrail.for_data_dir(settings.data_dir)
    audit.set_state(uid, A.PROCESSING)  # the process died mid-study
    queue = LocalQueue(_worker(settings))
    queue.recover()
    assert audit.study(uid)["state"] == A.QUEUED
    assert queue.run_once() and audit.study(uid)["state"] == A.DONE
    assert not queue.run_once()


def test_stow_rs_destination(make_settings, tmp_path):
    pacs = Orthanc(tmp_path / "orthanc-web", dicomweb=True)
    if not pacs.dicomweb:
        pytest.skip("needs the orthanc-dicomweb plugin")
    pacs.start()
    try:
        settings = make_settings(destinations=pacs.stow_url)
        uid = _spool_study(settings, tmp_path)
        worker = _worker(settings)
        assert worker.nodes[0].label == f"http://127.0.0.1:{pacs.http_port}/dicom-web"  # no password
        assert run_process(worker, uid, "t1", 1).action == "done"
        assert sorted(i["Modality"] for i in pacs.study_instances(uid)) == RESULT_MODALITIES
        assert worker.audit.study(uid)["state"] == A.DONE
    finally:
        pacs.stop()
    down = make_settings(destinations=pacs.stow_url, data_dir=tmp_path / "down")
    uid = _spool_study(down, tmp_path / "d")
    assert run_process(_worker(down), uid, "t1", 1).action == "deliver"  # server gone: retried later


def test_a_changed_result_is_sent_again_an_unchanged_one_is_not(make_settings, tmp_path, orthanc):
    from support import drawn_analyse

    from llnm.predict import predict_paths

    settings = make_settings(destinations=orthanc.node)
    uid = _spool_study(settings, tmp_path)
    sent = lambda: [e["objects"] for e in AuditTrail.for_data_dir(settings.data_dir).events(uid)  # noqa: E731
                    if e["event"] == "sent"]
    assert run_process(_worker(settings), uid, "t1", 1).action == "done"
    assert run_process(_worker(settings), uid, "t2", 1).action == "done"
    assert sent() == [len(RESULT_MODALITIES)]

    def revised(paths, backend, s):  # e.g. the report arrived after the images: another probability
        def analyse(study, b):
            result = drawn_analyse(study, b)
            result.probability = 0.9
            return result

        return predict_paths(paths, backend, s, analyse=analyse)

    assert run_process(_worker(settings, revised), uid, "t3", 1).action == "done"
    # the new result, and the IOCM rejection note of the old one (tests/service/test_reprocessing_delivery.py)
    assert sent() == [len(RESULT_MODALITIES), len(RESULT_MODALITIES) + 1]


def test_requeue_with_the_broker_down_leaves_the_study_failed(make_settings, tmp_path):
    settings = make_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    uid = _spool_study(settings, tmp_path)
    audit = AuditTrail.for_data_dir(settings.data_dir)
    audit.set_state(uid, A.FAILED, error="earlier failure")
    queued, errors = requeue(settings, [uid])
    assert queued == [] and "broker" in errors[uid]
    assert audit.study(uid)["state"] == A.FAILED
    assert [e["event"] for e in audit.events(uid)][-1] == "requeue failed"


def test_embedded_queue_starts_a_study_when_the_listener_queues_it_not_at_the_next_poll(make_settings, tmp_path):
    settings = make_settings()
    queue = LocalQueue(_worker(settings), poll_s=3600).start()  # an idle thread would sleep an hour
    try:
        time.sleep(0.3)  # the thread has found nothing and waits
        uid = _spool_study(settings, tmp_path)
        queue.enqueue(uid)
        assert wait_for(lambda: queue.audit.study(uid)["state"] not in (A.QUEUED, A.PROCESSING), 30)
    finally:
        queue.stop(timeout_s=5)
    assert not any(t.is_alive() for t in queue._workers)  # stop wakes the waiting threads too


def _report_only(study_uid: str, folder: Path) -> Path:
    """A Basic Text SR of the study (a report arriving after the images): no image in it."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = generate_uid()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = study_uid, generate_uid(), "SR"
    sr.PatientID, sr.PatientSex, sr.StudyDate, sr.StudyTime, sr.AccessionNumber = "P1", "F", "20250101", "120000", "A1"
    sr.StudyID, sr.ReferringPhysicianName, sr.SeriesNumber, sr.InstanceNumber = "1", "", 2, 1
    sr.ValueType, sr.ContentSequence = "CONTAINER", Sequence()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_a_late_report_after_retention_never_replaces_the_analysed_result_with_a_notice(make_settings, tmp_path):
    """Retention removed the images of a done study; its report arrives later and reopens it. A run that
    finds nothing to analyse must not write a "no image" notice superseding (and rejecting) the result
    already sent: the study is dead-lettered with the reason, the earlier result stands."""
    import pydicom

    from llnm.storage.spool import Spool

    settings = make_settings(retention_hours=1.0)
    uid = _spool_study(settings, tmp_path)
    worker = _worker(settings)
    assert run_process(worker, uid, "t1", 1).action == "done"
    summary_path = settings.results_path / uid / "summary.json"
    first = json.loads(summary_path.read_text())
    assert apply_retention(settings, worker.audit, now=time.time() + 7200) == [uid]

    report = _report_only(uid, tmp_path / "late")
    ds = pydicom.dcmread(report)
    Spool(settings.spool_dir, 0).store(uid, ds.SeriesInstanceUID, ds.SOPInstanceUID, report.read_bytes())
    worker.audit.set_state(uid, A.QUEUED)
    assert run_process(worker, uid, "t2", 1).action == "done"
    row = worker.audit.study(uid)
    assert row["state"] == A.FAILED and "earlier result stands" in row["error"]
    assert json.loads(summary_path.read_text()) == first  # no notice, no rejection note written over it
    assert [e["event"] for e in worker.audit.events(uid)].count("result") == 1

    # Without an earlier analysed result (a study that never had an image), the notice is the result.
    other = _spool_study(settings, tmp_path / "b")
    for path in Spool(settings.spool_dir, 0).instances(other):
        path.unlink()
    ds = pydicom.dcmread(_report_only(other, tmp_path / "late-b"))
    Spool(settings.spool_dir, 0).store(other, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                       (tmp_path / "late-b" / "report.dcm").read_bytes())
    assert run_process(worker, other, "t3", 1).action == "done"
    assert worker.audit.study(other)["state"] == A.DONE
    assert [e["event"] for e in worker.audit.events(other)].count("result") == 1


def test_two_runs_of_one_study_never_overlap_and_the_later_run_wins(make_settings, tmp_path):
    """A second message for a study arrives while a run is in progress (the listener queued it again for
    instances that came mid-run, or two worker threads got a message each): it waits for the first run
    instead of racing it, so the result sent last is the one computed last, from every instance."""
    import threading

    settings = make_settings()
    uid = _spool_study(settings, tmp_path)
    entered, release = threading.Event(), threading.Event()

    def slow_predict(paths, backend, s):
        entered.set()
        assert release.wait(30)
        return standin_predict(paths, backend, s)

    first = _worker(settings, predict=slow_predict)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("first", run_process(first, uid, "t1", 1)))
    runner.start()
    assert entered.wait(30)
    second = _worker(settings)
    step = run_process(second, uid, "t2", 1)  # the first still holds the study
    assert step.action == "process" and step.attempt == 1 and step.delay_s > 0
    assert [e["event"] for e in second.audit.events(uid)].count("result") == 0
    assert second.audit.study(uid)["state"] == A.QUEUED  # it must run again after the first
    release.set()
    runner.join(30)
    assert outcome["first"].action == "done"
    assert second.audit.run_lease(uid) == (None, 0.0)  # the first run's lease ended with it
    assert second.audit.study(uid)["state"] == A.QUEUED  # the first run does not close the study
    assert run_process(second, uid, "t2", 1).action == "done"
    events = second.audit.events(uid)
    assert [e.get("task_id") for e in events if e["event"] == "result"] == ["t1", "t2"]
    assert second.audit.study(uid)["state"] == A.DONE


def test_a_run_lease_belongs_to_its_owner_until_it_expires(tmp_path):
    audit = AuditTrail(tmp_path / "a.sqlite3")
    now = 1000.0
    assert audit.claim_run("1.2.3", "t1", 60, now=now)
    assert not audit.claim_run("1.2.3", "t2", 60, now=now + 30)  # another owner, lease running
    assert audit.claim_run("1.2.3", "t1", 60, now=now + 30)  # the same task redelivered after a kill
    assert audit.claim_run("1.2.3", "t2", 60, now=now + 91)  # the lease expired: a crashed run
    audit.release_run("1.2.3", "t1")  # an old owner cannot end the new owner's lease
    assert audit.run_lease("1.2.3") == ("t2", now + 151)
    audit.release_run("1.2.3", "t2")
    assert audit.run_lease("1.2.3") == (None, 0.0) and audit.study("1.2.3")["state"] == A.PROCESSING


def test_a_step_whose_bookkeeping_fails_runs_again_instead_of_ending_acknowledged():
    """Celery acknowledges a failed task even with acks_late: an exception escaping a step (the audit
    database locked while recording a failure, the broker gone while publishing the next step) would leave
    the study with no message. The step is published again, or its message handed back."""
    import sqlite3

    from celery.exceptions import Reject

    from llnm.worker.process import Next
    from llnm.worker.tasks import guarded

    def failing(exc):
        def run():
            raise exc
        return run

    published, again = [], []
    guarded("1.2.3", lambda: Next("deliver", 2, 4.0), published.append, lambda: again.append(1))
    assert published == [Next("deliver", 2, 4.0)] and again == []  # the normal path: the next step only

    guarded("1.2.3", failing(sqlite3.OperationalError("database is locked")), published.append,
            lambda: again.append(1))
    assert again == [1]

    def broker_gone(step):
        raise ConnectionError("broker")

    guarded("1.2.3", lambda: Next("deliver", 1, 0.0), broker_gone, lambda: again.append(2))
    assert again == [1, 2]

    with pytest.raises(Reject) as rejected:  # not even the same step can be published: back to the queue
        guarded("1.2.3", failing(OSError(28, "No space left on device")), published.append, broker_gone)
    assert rejected.value.requeue is True


def test_requeue_takes_a_stranded_processing_study_but_not_one_a_run_holds(make_settings, tmp_path):
    settings = make_settings()
    uid = _spool_study(settings, tmp_path)
    audit = AuditTrail.for_data_dir(settings.data_dir)
    assert audit.claim_run(uid, "t1", 600)
    queued, errors = requeue(settings, [uid], audit=audit)
    assert queued == [] and "processed without a requeue" in errors[uid]
    audit.release_run(uid, "t1")  # a worker gone without its message: processing, no run holds it
    assert requeue(settings, [uid], audit=audit)[0] == [uid] and audit.study(uid)["state"] == A.QUEUED
