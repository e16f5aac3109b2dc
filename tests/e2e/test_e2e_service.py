"""The product end to end, against real parts: dcmtk's storescu sends studies to `llnm listener`; a real
Celery `llnm worker` on Redis processes them (the Triton server and the trained models when they exist,
else the pipeline stand-in) and C-STOREs the results to a real Orthanc, checked over its REST API."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from support import SC_IMAGE_STORAGE, VENV_BIN, metric, scrape, wait_for, write_study

from llnm import audit as A

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def storescu(port: int, paths: list[Path], aet: str = "MODALITY") -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-R", "-xy", "-aet", aet, "-aec", "LLNM", "127.0.0.1", str(port), *map(str, paths)],
                          capture_output=True, text=True, env={"TCP_NODELAY": "1"}, timeout=60)


def phantom(folder: Path, seed: int) -> tuple[str, list[Path]]:
    run = subprocess.run([str(VENV_BIN / "llnm"), "phantom", "--out", str(folder), "--studies", "1",
                          "--seed", str(seed)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    files = sorted(p for p in folder.glob("*/*.dcm"))
    return files[0].parent.name, files


def wait_state(stack, uid: str, states: tuple[str, ...], timeout_s: float = 60) -> dict:
    audit = stack.audit()
    row = wait_for(lambda: (r := audit.study(uid)) is not None and r["state"] in states and r, timeout_s, 0.2)
    assert row, f"study never reached {states}: {audit.study(uid)} {audit.events(uid)}"
    return row


def result_objects(orthanc, uid: str) -> list[dict]:
    from llnm import MANUFACTURER

    return [i for i in orthanc.study_instances(uid) if i.get("Manufacturer") == MANUFACTURER]


def sent_objects(stack, uid: str) -> int:
    return sum(e.get("objects", 0) for e in stack.audit().events(uid) if e["event"] == "sent")


def sr_items(data: bytes) -> list[tuple[str, str, object]]:
    """(value type, concept name, item) of every content item of an SR, depth first."""
    import io

    out = []

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            out.append((item.get("ValueType"), name, item))
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(io.BytesIO(data)).ContentSequence)
    return out


def sr_probability_percent(data: bytes) -> float | None:
    """The NUM 'Probability of lateral lymph node metastasis' of our SR (None: no nodule, no number)."""
    found = [float(item.MeasuredValueSequence[0].NumericValue) for kind, name, item in sr_items(data)
             if kind == "NUM" and "probability" in name.lower()]
    assert len(found) <= 1, found
    return found[0] if found else None


def sr_finding(data: bytes) -> str | None:
    """The TEXT 'Finding' of our SR: "nodule", "no nodule found" or "not assessable...: <reason>"."""
    found = [str(item.TextValue) for kind, name, item in sr_items(data) if kind == "TEXT" and name == "Finding"]
    return found[0] if found else None


def test_study_reaches_the_pacs_in_the_same_study_and_metrics_move(stack, orthanc, tmp_path):
    listener = stack.listener()
    worker = stack.worker()
    l_before, w_before = scrape(stack.listener_metrics), scrape(stack.worker_metrics)
    uid, files = phantom(tmp_path / "phantom", seed=11)
    run = storescu(stack.dicom_port, files)
    assert run.returncode == 0, run.stderr
    row = wait_state(stack, uid, (A.DONE, A.FAILED))
    assert row["state"] == A.DONE, (row, stack.audit().events(uid), worker.log_tail())
    results = result_objects(orthanc, uid)
    modalities = sorted(i["Modality"] for i in results)
    assert "SR" in modalities and "SEG" in modalities and len(modalities) >= 3, modalities
    if stack.standin:  # the models stood in: the SR carries the stand-in's probability
        sr = [i for i in results if i["Modality"] == "SR"][0]
        assert sr_probability_percent(orthanc.instance_file(sr["SOPInstanceUID"])) == pytest.approx(42.42)
    assert all(i["StudyInstanceUID"] == uid for i in results)
    assert sent_objects(stack, uid) == len(results)
    l_after, w_after = scrape(stack.listener_metrics), scrape(stack.worker_metrics)
    assert metric(l_after, "llnm_instances_received_total", calling_ae="MODALITY", status="stored") - \
        metric(l_before, "llnm_instances_received_total", calling_ae="MODALITY", status="stored") == len(files)
    assert metric(l_after, "llnm_studies_completed_total", outcome="queued") > \
        metric(l_before, "llnm_studies_completed_total", outcome="queued")
    for name in ("llnm_studies_processed_total", "llnm_objects_sent_total"):
        assert metric(w_after, name) > metric(w_before, name), name
    assert metric(w_after, "llnm_stage_seconds_count", stage="send") > \
        metric(w_before, "llnm_stage_seconds_count", stage="send")
    for port in (stack.listener_metrics, stack.worker_metrics):
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert uid not in text
    # JSON logs carry the UIDs and task ids, never the patient's name, ID or birth date
    header = pydicom.dcmread(files[-1], stop_before_pixels=True)
    secrets = [str(header.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate") if header.get(k)]
    for service in (listener, worker):
        lines = [json.loads(line) for line in service.log_tail(10**7).splitlines() if line.startswith("{")]
        assert any(line.get("study_uid") == uid for line in lines), service.name
        assert not [s for s in secrets if s in service.log_tail(10**7)], service.name
    assert any(line.get("task_id") for line in (json.loads(x) for x in worker.log_tail(10**7).splitlines()
                                                if x.startswith("{")))
    # the PACS routing the whole study back, our results included: nothing is processed again
    back = tmp_path / "back"
    back.mkdir()
    for i, obj in enumerate(results):
        (back / f"{i}.dcm").write_bytes(orthanc.instance_file(obj["SOPInstanceUID"]))
    assert storescu(stack.dicom_port, sorted(back.iterdir()), aet="PACS").returncode == 0
    wait_for(lambda: False, 3)  # longer than both completion timers
    assert [e["event"] for e in stack.audit().events(uid)].count("processing") == 1
    assert stack.audit().study(uid)["state"] == A.DONE


def test_unknown_calling_ae_is_rejected_and_a_non_ultrasound_study_is_ignored(stack, orthanc, tmp_path):
    stack.listener()
    stack.worker()
    _, files = write_study(tmp_path / "us", per_series=1)
    run = storescu(stack.dicom_port, files, aet="STRANGER")
    assert run.returncode != 0 and "Rejected" in run.stdout + run.stderr
    uid, files = write_study(tmp_path / "ot", per_series=2, modality="OT", sop_class=SC_IMAGE_STORAGE)
    assert storescu(stack.dicom_port, files).returncode == 0
    row = wait_state(stack, uid, (A.IGNORED, A.QUEUED, A.DONE))
    assert row["state"] == A.IGNORED and row["instances"] == 2
    assert not [e for e in stack.audit().events(uid) if e["event"] == "processing"]
    assert orthanc.study_instances(uid) == []


def test_pacs_down_while_results_are_ready_gets_them_when_back(stack, orthanc, tmp_path):
    stack.listener()
    stack.worker()
    uid, files = phantom(tmp_path / "phantom", seed=12)
    orthanc.stop()
    try:
        assert storescu(stack.dicom_port, files).returncode == 0
        row = wait_state(stack, uid, (A.SENDING, A.FAILED, A.DONE), timeout_s=90)
        assert row["state"] == A.SENDING
        wait_for(lambda: (stack.audit().study(uid) or {}).get("send_attempts", 0) >= 2, 30, 0.2)
    finally:
        orthanc.start()
    row = wait_state(stack, uid, (A.DONE, A.FAILED), timeout_s=60)
    assert row["state"] == A.DONE
    assert result_objects(orthanc, uid) and sent_objects(stack, uid) == len(result_objects(orthanc, uid))
    assert any(e["event"] == "send failed" for e in stack.audit().events(uid))


def test_worker_killed_mid_study_delivers_the_results_exactly_once(stack, orthanc, tmp_path):
    stack.listener()
    doomed = stack.worker(LLNM_TEST_STANDIN_DELAY_S="5")
    uid, files = phantom(tmp_path / "phantom", seed=13)
    assert storescu(stack.dicom_port, files).returncode == 0
    row = wait_state(stack, uid, (A.PROCESSING, A.SENDING, A.DONE), timeout_s=60)
    assert row["state"] == A.PROCESSING, "the study finished before the kill: the test proves nothing"
    doomed.kill9()
    stack.worker()
    row = wait_state(stack, uid, (A.DONE, A.FAILED), timeout_s=90)
    assert row["state"] == A.DONE
    results = result_objects(orthanc, uid)
    assert results and sent_objects(stack, uid) == len(results)
    assert [e["event"] for e in stack.audit().events(uid)].count("processing") >= 2


def test_listener_crashed_between_instances_processes_the_study_once(stack, orthanc, tmp_path):
    timers = {"LLNM_SERIES_IDLE_S": "4", "LLNM_STUDY_IDLE_S": "4"}  # longer than a restart takes here
    listener = stack.listener(**timers)
    stack.worker()
    uid, files = phantom(tmp_path / "phantom", seed=14)
    assert storescu(stack.dicom_port, files[:1]).returncode == 0
    listener.kill9()  # a crash, not a clean stop
    stack.listener(**timers)
    assert storescu(stack.dicom_port, files[1:]).returncode == 0
    row = wait_state(stack, uid, (A.DONE, A.FAILED))
    assert row["state"] == A.DONE and row["instances"] == len(files)
    events = [e["event"] for e in stack.audit().events(uid)]
    assert events.count("queued") == 1 and events.count("processing") == 1, events
    assert "ignored" not in events and "reopened" not in events, events
    assert result_objects(orthanc, uid)


def test_real_file_study_and_probability_equal_to_llnm_predict(stack, orthanc, tmp_path):
    if stack.standin:
        pytest.skip("trained models (nodule_seg, thyroid_seg, text_encoder, tmdl) not in model_repository/ yet")
    stack.listener()
    stack.worker()
    # a real ultrasound file (30-frame JPEG Baseline with regions), as its own study
    real = tmp_path / "real" / "us.dcm"
    real.parent.mkdir()
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm", download=False))
    ds.save_as(real)
    real_uid = str(ds.StudyInstanceUID)
    uid, files = phantom(tmp_path / "phantom", seed=16)  # a study the shipped models answer with a number
    assert storescu(stack.dicom_port, files + [real]).returncode == 0
    for study in (uid, real_uid):
        assert wait_state(stack, study, (A.DONE, A.FAILED), timeout_s=120)["state"] == A.DONE
    real_results = result_objects(orthanc, real_uid)
    assert real_results and all(i["StudyInstanceUID"] == real_uid for i in real_results)
    out = tmp_path / "predict"
    run = subprocess.run([str(VENV_BIN / "llnm"), "predict", str(files[0].parent), str(real), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for study in (uid, real_uid):
        summary = json.loads((out / study / "summary.json").read_text())
        expected = summary["probability"]
        sr = [i for i in result_objects(orthanc, study) if i["Modality"] == "SR"]
        assert len(sr) == 1, study
        sr_data = orthanc.instance_file(sr[0]["SOPInstanceUID"])
        got = sr_probability_percent(sr_data)
        # the same decision (answered, no nodule, or declined and why) through Triton and ONNX Runtime
        assert sr_finding(sr_data) == summary["finding"], study
        if expected is None:  # no nodule found: neither says a probability
            assert got is None, study
        else:
            assert got == pytest.approx(round(100 * expected, 2), abs=0.01), study
        assert stack.audit().study(study)["probability"] == expected
    # the phantom study is answered with a number by llnm predict; the worker through Triton must agree
    assert json.loads((out / uid / "summary.json").read_text())["probability"] is not None
