"""The accept loop under silent and flooding peers: a socket that has sent no association request holds no
association slot, is closed within the association request timeout, and the sockets in that stage are
bounded; a valid modality (C-ECHO and C-STORE by pynetdicom) is served at once throughout. Refused
connections and rejected associations are counted by reason, never by address or AE title."""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from llnm.config import Settings
from llnm.listener.app import Listener
from llnm.listener.guard import LINES_PER_MINUTE
from llnm.listener.pynetdicom_adapter.accept import check_hook_points
from llnm.observability import metrics
from llnm.observability.logs import JsonFormatter

from .conftest import free_port

VERIFICATION = "1.2.840.10008.1.1"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
#: The listener's timeouts here: the request timeout short so the tests are fast, the network timeout long
#: so that a silent socket still holding an association slot (the behaviour fixed) would show.
REQUEST_TIMEOUT_S = 1.5
NETWORK_TIMEOUT_S = 30.0
#: A valid sender's C-ECHO plus C-STORE takes milliseconds; this is the most it may take during an attack.
SERVED_WITHIN_S = 3.0



@pytest.fixture
def start(tmp_path: Path):
    started: list[Listener] = []

    def run(**overrides) -> Listener:
        values = dict(data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM", bind_address="127.0.0.1",
                      series_idle_s=30, study_idle_s=30, metrics_port=0, min_free_disk_mb=1,
                      network_timeout_s=NETWORK_TIMEOUT_S, association_request_timeout_s=REQUEST_TIMEOUT_S,
                      max_associations=4)
        values.update(overrides)
        listener = Listener(Settings(**values), lambda uid: "task", completion_interval_s=0.05).start()
        started.append(listener)
        return listener

    yield run
    for listener in started:
        listener.stop()


def _image() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "ID-987654"
    ds.Modality = "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    return ds


def served(port: int, calling: str = "MODALITY", called: str = "LLNM", **associate_kwargs) -> float:
    """A C-ECHO and a C-STORE on one association, as a modality sends them; returns the seconds taken
    (fails the test if either is refused)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(US_IMAGE_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    began = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title=called, **associate_kwargs)
    assert assoc.is_established, "the association was refused"
    try:
        assert int(assoc.send_c_echo().Status) == 0
        assert int(assoc.send_c_store(_image()).Status) == 0
    finally:
        assoc.release()
    return time.monotonic() - began


def refused(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("llnm_connections_refused_total", {"reason": reason}) or 0.0


def _connect(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def closed_by_listener(sock: socket.socket, limit_s: float) -> bool:
    """True once the listener has closed `sock` (read end of file or a reset), False after `limit_s`."""
    sock.settimeout(0.2)
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def wait_until(condition, limit_s: float) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def assert_clean_logs(caplog, capfd) -> None:
    """No traceback, no patient data, in the log records or on stderr (pynetdicom's handle_error)."""
    assert not [r for r in caplog.records if r.exc_info], "a log line with a traceback"
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records) + capfd.readouterr().err
    assert "Traceback" not in text
    for secret in ("SECRET^PATIENT", "ID-987654"):
        assert secret not in text


def test_twenty_silent_connections_then_closed_do_not_lock_out_senders(start, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    listener = start()
    silent = _connect(listener.port, 20)
    assert wait_until(lambda: listener._server.pending_connections == 20, 2)
    assert not listener.ae.active_associations, "a silent socket holds an association slot"
    assert served(listener.port) < SERVED_WITHIN_S
    for s in silent:
        s.close()
    assert served(listener.port) < SERVED_WITHIN_S
    # each of them is gone at once, none of them counted as refused (a port probe, a TCP health check)
    assert wait_until(lambda: listener._server.pending_connections == 0, 2)
    assert served(listener.port) < SERVED_WITHIN_S
    assert_clean_logs(caplog, capfd)


def test_hundred_silent_connections_held_open(start, caplog, capfd):
    caplog.set_level(logging.INFO)
    listener = start()  # the default bound: 64 sockets without an association
    limit, silent_before = listener.settings.max_pending_connections, refused("no_association_request")
    over_before = refused("pre_association_limit")
    silent = _connect(listener.port, 100)
    try:
        assert wait_until(lambda: refused("pre_association_limit") - over_before >= 100 - limit, 3)
        assert listener._server.pending_connections <= limit
        for _ in range(3):
            assert served(listener.port) < SERVED_WITHIN_S
        assert wait_until(lambda: not listener.ae.active_associations, 2)
        # the oldest were closed to make room; the rest within the request timeout
        assert all(closed_by_listener(s, REQUEST_TIMEOUT_S + 3) for s in silent)
    finally:
        for s in silent:
            s.close()
    assert listener._server.pending_connections == 0
    assert refused("no_association_request") - silent_before >= 1
    assert served(listener.port) < SERVED_WITHIN_S
    lines = [r for r in caplog.records if r.levelno == logging.WARNING and getattr(r, "llnm_fields", {}).get(
        "reason") in ("no_association_request", "pre_association_limit")]
    assert lines and len(lines) <= LINES_PER_MINUTE, "each refused socket got its own log line: a flood"
    assert_clean_logs(caplog, capfd)


def test_a_silent_connection_is_closed_after_the_request_timeout(start):
    listener = start()
    before = refused("no_association_request")
    sock = _connect(listener.port, 1)[0]
    began = time.monotonic()
    try:
        assert closed_by_listener(sock, REQUEST_TIMEOUT_S + 3)
        assert REQUEST_TIMEOUT_S - 0.2 <= time.monotonic() - began <= REQUEST_TIMEOUT_S + 1.5
    finally:
        sock.close()
    assert wait_until(lambda: refused("no_association_request") == before + 1, 2)


def _associate_rq_start() -> bytes:
    """The first 40 bytes of a 400-byte A-ASSOCIATE-RQ PDU (PS3.8 9.3.2): a request begun, never finished."""
    body = struct.pack(">HH", 1, 0) + b"LLNM".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
    return (struct.pack(">BBI", 0x01, 0, 400) + body)[:40]


@pytest.mark.parametrize("opening", [b"\x01", _associate_rq_start()], ids=["one byte", "part of a request"])
def test_a_begun_but_unfinished_request_holds_no_association_slot(start, opening: bytes):
    """Eight peers (twice the association limit) that start an A-ASSOCIATE-RQ and stall."""
    listener = start()
    before = refused("no_association_request")
    stalled = _connect(listener.port, 8)
    for s in stalled:
        s.sendall(opening)
    try:
        assert wait_until(lambda: listener._server.pending_connections == 8, 2)
        assert not listener.ae.active_associations
        assert served(listener.port) < SERVED_WITHIN_S
        assert all(closed_by_listener(s, REQUEST_TIMEOUT_S + 3) for s in stalled)
    finally:
        for s in stalled:
            s.close()
    assert wait_until(lambda: refused("no_association_request") == before + 8, 2)


def test_the_request_timeout_is_at_most_the_network_timeout(start):
    listener = start(network_timeout_s=0.5, association_request_timeout_s=60)
    sock = _connect(listener.port, 1)[0]
    try:
        assert closed_by_listener(sock, 3)
    finally:
        sock.close()


def test_a_full_pending_stage_drops_the_oldest_and_serves_the_newest(start):
    listener = start(max_pending_connections=5)
    before = refused("pre_association_limit")
    silent = _connect(listener.port, 5)
    try:
        assert wait_until(lambda: listener._server.pending_connections == 5, 2)
        assert served(listener.port) < SERVED_WITHIN_S  # took the oldest's place
        assert closed_by_listener(silent[0], 1), "the oldest silent socket is still open"
        assert wait_until(lambda: refused("pre_association_limit") == before + 1, 2)
    finally:
        for s in silent:
            s.close()


def test_a_valid_sender_is_not_slowed_down(start):
    """The pre-association stage costs a thread and a poll: associations keep their pace."""
    listener = start()
    served(listener.port)  # warm up
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    began, n = time.monotonic(), 20
    for _ in range(n):
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
        assert assoc.is_established
        assoc.send_c_echo()
        assoc.release()
    assert (time.monotonic() - began) / n < 0.25, "an association took a quarter of a second"


def test_rejected_associations_are_counted_by_reason_and_logged(start, caplog, capfd):
    caplog.set_level(logging.INFO)
    listener = start(max_associations=1, allowed_aes="MODALITY")
    before = {r: refused(r) for r in metrics.REFUSAL_REASONS}
    # a called AE title that is not ours
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="NOT_LLNM")
    assert assoc.is_rejected
    # a calling AE title not on the allow-list
    stranger = AE(ae_title="STRANGER_AE")
    stranger.add_requested_context(VERIFICATION)
    assert stranger.associate("127.0.0.1", listener.port, ae_title="LLNM").is_rejected
    # the association limit, while one association is open (once the two rejected ones have left their slot:
    # a loaded machine can still be closing them)
    assert wait_until(lambda: not any(a.is_acceptor for a in listener.ae.active_associations), 5)
    held = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
    assert held.is_established
    try:
        assert ae.associate("127.0.0.1", listener.port, ae_title="LLNM").is_rejected
    finally:
        held.release()
    for reason in ("called_ae_not_recognised", "calling_ae_not_allowed", "association_limit"):
        assert wait_until(lambda: refused(reason) == before[reason] + 1, 2), reason
    reasons = {s.labels["reason"] for fam in metrics.REGISTRY.collect() if fam.name == "llnm_connections_refused"
               for s in fam.samples}
    assert reasons == set(metrics.REFUSAL_REASONS), "a label value that is not a fixed reason"
    def logged() -> set:
        return {getattr(r, "llnm_fields", {}).get("reason") for r in caplog.records if r.levelno == logging.WARNING}

    assert wait_until(lambda: {"called_ae_not_recognised", "association_limit"} <= logged(), 2)
    # the released association leaves its one slot asynchronously: on a loaded machine it can still hold it
    assert wait_until(lambda: not any(a.is_acceptor for a in listener.ae.active_associations), 5)
    assert served(listener.port) < SERVED_WITHIN_S
    assert_clean_logs(caplog, capfd)


def test_stop_closes_pending_connections(start):
    listener = start()
    silent = _connect(listener.port, 3)
    assert wait_until(lambda: listener._server.pending_connections == 3, 2)
    began = time.monotonic()
    listener.stop()
    assert time.monotonic() - began < 2
    try:
        assert all(closed_by_listener(s, 1) for s in silent)
    finally:
        for s in silent:
            s.close()


def test_the_pynetdicom_internals_it_overrides_are_there():
    assert check_hook_points(AE()) == []
