"""The listener over real DICOM networking: dcmtk's storescu/echoscu and pynetdicom as senders."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from support import PATIENT_ID, PATIENT_NAME, make_us, metric, wait_for, write_study

from llnm import audit as A
from llnm.dimse import parse_node
from llnm.listener.app import Listener
from llnm.observability import metrics
from llnm.observability.logs import JsonFormatter
from llnm.worker.sender import send_files

needs_dcmtk = pytest.mark.skipif(not shutil.which("storescu"), reason="needs dcmtk (scripts/test-services.sh)")


@pytest.fixture
def run_listener(make_settings):
    started: list[Listener] = []

    def start(**overrides) -> tuple[Listener, list[str]]:
        calls: list[str] = []

        def enqueue(uid: str) -> str:
            calls.append(uid)
            return f"task-{len(calls)}"

        listener = Listener(make_settings(**overrides), enqueue, completion_interval_s=0.05).start()
        started.append(listener)
        return listener, calls

    yield start
    for listener in started:
        listener.stop()


def _store_status(port: int, ds: pydicom.Dataset, calling: str = "MODALITY", called: str = "LLNM") -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _snapshot() -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@needs_dcmtk
def test_storescu_study_is_spooled_and_queued_once(run_listener, tmp_path: Path):
    listener, calls = run_listener()
    study_uid, paths = write_study(tmp_path / "in", series=2, per_series=3)
    assert subprocess.run(["echoscu", "-aec", "LLNM", "127.0.0.1", str(listener.port)]).returncode == 0
    before = _snapshot()
    run = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "LLNM", "127.0.0.1", str(listener.port),
                          *map(str, paths)], capture_output=True, text=True, env={"TCP_NODELAY": "1"})
    assert run.returncode == 0, run.stderr
    assert len(listener.spool.instances(study_uid)) == 6
    assert wait_for(lambda: calls, 10) == [study_uid]
    after = _snapshot()
    assert metric(after, "llnm_instances_received_total", calling_ae="MODALITY", status="stored") - \
        metric(before, "llnm_instances_received_total", calling_ae="MODALITY", status="stored") == 6
    assert metric(after, "llnm_received_bytes_total") > metric(before, "llnm_received_bytes_total")
    events = [e["event"] for e in listener.audit.events(study_uid)]
    assert events.count("series complete") == 2 and events.count("queued") == 1
    assert listener.audit.study(study_uid)["state"] == A.QUEUED
    # a file on disk is byte-for-byte what was sent (the dataset is written as received)
    sent = pydicom.dcmread(paths[0])
    spooled = pydicom.dcmread(listener.spool.path_for(study_uid, sent.SeriesInstanceUID, sent.SOPInstanceUID))
    assert spooled.PixelData == sent.PixelData and spooled.PatientName == sent.PatientName


@needs_dcmtk
def test_unknown_calling_ae_and_wrong_address_are_rejected(run_listener, tmp_path: Path):
    listener, calls = run_listener(allowed_aes="MODALITY,REMOTE@10.9.9.9")
    _, paths = write_study(tmp_path / "in", per_series=1)
    for aet in ("EVIL", "REMOTE"):
        run = subprocess.run(["storescu", "-aet", aet, "-aec", "LLNM", "127.0.0.1", str(listener.port),
                              str(paths[0])], capture_output=True, text=True)
        assert run.returncode != 0 and "Rejected" in (run.stdout + run.stderr)
    assert not list(listener.spool.root.rglob("*.dcm"))
    assert metric(_snapshot(), "llnm_associations_total", calling_ae="other", result="rejected") >= 1
    ok = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "LLNM", "127.0.0.1", str(listener.port),
                         str(paths[0])], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # a wrong called AE title is refused too, and counted
    before = metric(_snapshot(), "llnm_associations_total", calling_ae="MODALITY", result="rejected")
    bad = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "NOTLLNM", "127.0.0.1", str(listener.port),
                          str(paths[0])], capture_output=True, text=True)
    assert bad.returncode != 0
    assert metric(_snapshot(), "llnm_associations_total", calling_ae="MODALITY", result="rejected") == before + 1
    assert metric(_snapshot(), "llnm_associations_total", calling_ae="MODALITY", result="accepted") >= 1


def test_disk_watermark_answers_out_of_resources_and_stores_nothing(run_listener):
    listener, calls = run_listener(min_free_disk_mb=10**9)
    ds = make_us("1.2.3", "1.2.3.1")
    assert _store_status(listener.port, ds) == 0xA700
    assert not list(listener.spool.root.rglob("*.dcm"))
    assert listener.audit.study("1.2.3") is None


def test_write_error_answers_out_of_resources(run_listener):
    listener, _ = run_listener()
    (listener.spool.root / "1.2.3").write_text("not a folder")  # the study folder cannot be created
    assert _store_status(listener.port, make_us("1.2.3", "1.2.3.1")) == 0xA700


def test_invalid_uid_is_refused_not_written(run_listener):
    listener, _ = run_listener()
    ds = make_us("1.2.3", "1.2.3.1")
    ds.StudyInstanceUID = "1.2.3/../../x"
    assert _store_status(listener.port, ds) == 0xC000
    assert not list(listener.spool.root.rglob("*.dcm"))


def test_instance_limit_per_study(run_listener):
    listener, _ = run_listener(max_instances_per_study=2)
    statuses = [_store_status(listener.port, make_us("1.2.3", "1.2.3.1")) for _ in range(3)]
    assert statuses == [0, 0, 0xA700]


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm",
                                  "examples_jpeg2k.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "JPEG-lossy.dcm"])
def test_real_files_in_their_own_transfer_syntax_are_accepted(run_listener, name: str):
    listener, _ = run_listener()
    path = Path(get_testdata_file(name, download=False))
    report = send_files([path], parse_node(f"LLNM@127.0.0.1:{listener.port}"), "MODALITY")
    assert report.sent == [path], report.failed
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert listener.spool.instances(str(ds.StudyInstanceUID))


def test_own_output_is_stored_but_starts_nothing(run_listener):
    from llnm import MANUFACTURER

    listener, calls = run_listener()
    ds = make_us("1.2.3", "1.2.3.1", sop_class="1.2.840.10008.5.1.4.1.1.7", manufacturer=MANUFACTURER)
    assert _store_status(listener.port, ds) == 0
    assert listener.spool.instances("1.2.3")
    assert listener.tracker.waiting() == 0 and listener.audit.study("1.2.3") is None


def test_restart_between_instances_processes_the_study_once(make_settings):
    settings = make_settings(series_idle_s=2, study_idle_s=2)  # longer than a restart, even on a busy machine
    calls: list[str] = []
    first = Listener(settings, calls.append, completion_interval_s=0.05).start()
    assert _store_status(settings.port, make_us("1.2.3", "1.2.3.1")) == 0
    first.stop()
    second = Listener(settings, calls.append, completion_interval_s=0.05).start()
    try:
        assert _store_status(settings.port, make_us("1.2.3", "1.2.3.1")) == 0
        assert wait_for(lambda: calls, 10) == ["1.2.3"]
        wait_for(lambda: len(calls) > 1, 1.5)
        assert calls == ["1.2.3"]
        assert second.audit.study("1.2.3")["instances"] == 2
    finally:
        second.stop()


def test_tls_listener_with_self_signed_certificate(make_settings, tmp_path: Path):
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    settings = make_settings(tls_cert=str(cert), tls_key=str(key), tls_ca=str(cert))
    listener = Listener(settings, lambda uid: None).start()
    try:
        src = tmp_path / "one.dcm"
        make_us("1.2.3", "1.2.3.1").save_as(src, enforce_file_format=True)
        from llnm.dimse import client_tls_context

        node = parse_node(f"LLNM@127.0.0.1:{settings.port};tls")
        # mutual TLS: the client shows the certificate the listener trusts
        ok = send_files([src], node, "MODALITY", tls_context=client_tls_context(str(cert), str(cert), str(key)))
        assert ok.sent == [src], ok.failed
        # without a client certificate, or in plain TCP, nothing is accepted
        no_cert = send_files([src], node, "MODALITY", tls_context=client_tls_context(str(cert)))
        assert not no_cert.sent
        plain = send_files([src], parse_node(f"LLNM@127.0.0.1:{settings.port}"), "MODALITY", timeout_s=3)
        assert not plain.sent
        assert len(listener.spool.instances("1.2.3")) == 1
    finally:
        listener.stop()


def test_accepted_sockets_use_tcp_nodelay(run_listener):
    listener, _ = run_listener()
    seen: list[int] = []
    from pynetdicom import evt

    def check(event):
        seen.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return 0

    listener._server.bind(evt.EVT_C_ECHO, check)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
    assoc.send_c_echo()
    assoc.release()
    assert seen and all(seen)


def test_logs_carry_uids_and_never_patient_data(run_listener, caplog):
    listener, calls = run_listener()
    caplog.set_level(logging.DEBUG, logger="llnm")
    ds = make_us("1.2.3", "1.2.3.1")
    assert _store_status(listener.port, ds) == 0
    wait_for(lambda: calls, 5)
    lines = [JsonFormatter().format(r) for r in caplog.records]
    text = "\n".join(lines)
    assert "1.2.3" in text and str(ds.SOPInstanceUID) in text
    for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "19700101"):
        assert secret not in text


def test_max_associations(run_listener):
    listener, _ = run_listener(max_associations=1)
    first, second = AE(ae_title="MODALITY"), AE(ae_title="MODALITY")
    for ae in (first, second):
        ae.add_requested_context("1.2.840.10008.1.1")
    held = first.associate("127.0.0.1", listener.port, ae_title="LLNM")
    try:
        assert held.is_established
        extra = second.associate("127.0.0.1", listener.port, ae_title="LLNM")
        assert extra.is_rejected
    finally:
        held.release()
