"""Malformed association traffic and hostile C-STORE requests against a running listener.

Each raw-socket peer (garbage, the wrong protocol, a truncated or oversized PDU, a silent connection) must
be closed by the listener within its network timeout, and a well-behaved modality must still be served
while and after it happens. Hostile datasets sent by C-STORE get a failure status (or are stored under
their valid UIDs), and nothing is ever written outside the spool."""

from __future__ import annotations

import copy
import logging
import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from prometheus_client import generate_latest
from pynetdicom import AE

from llnm.config import Settings
from llnm.listener.app import Listener
from llnm.storage.names import validate_uid
from llnm.observability import metrics
from llnm.observability.logs import JsonFormatter

from .conftest import free_port, running_listener

VERIFICATION = "1.2.840.10008.1.1"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
#: The listener's network timeout in these tests; a hostile peer must be gone well within CLOSE_WITHIN_S.
NETWORK_TIMEOUT_S = 1.0
CLOSE_WITHIN_S = 15.0



@pytest.fixture
def listener(tmp_path: Path):
    with running_listener(tmp_path, network_timeout_s=NETWORK_TIMEOUT_S, max_associations=4) as running:
        yield running


def _echo(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="LLNM")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def _associate_rq_body(called: str = "LLNM", calling: str = "MODALITY") -> bytes:
    """The fixed part of an A-ASSOCIATE-RQ (PS3.8 9.3.2), without its variable items."""
    return (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32))


def _pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


HOSTILE_OPENINGS = {
    "garbage": b"\x99\x42" + bytes(range(256)) * 4,
    "wrong protocol (HTTP)": b"GET /metrics HTTP/1.1\r\nHost: llnm\r\n\r\n",
    "wrong protocol (TLS hello)": bytes.fromhex("16030100a5010000a10303") + bytes(40),
    "truncated A-ASSOCIATE-RQ": _pdu(0x01, _associate_rq_body(), length=400)[:40],
    "oversized PDU length": _pdu(0x01, _associate_rq_body(), length=0xFFFFFFF0),
    "oversized P-DATA before association": _pdu(0x04, b"\x00" * 64, length=0x7FFFFFFF),
    "silent connection": b"",
}


def _closed_by_peer(sock: socket.socket, limit_s: float) -> bool:
    """Read until the listener closes the connection (an A-ABORT may come first); False on the limit."""
    sock.settimeout(0.5)
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


@pytest.mark.parametrize("name", sorted(HOSTILE_OPENINGS))
def test_hostile_connection_is_closed_and_others_are_served(listener, name: str):
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
    try:
        if HOSTILE_OPENINGS[name]:
            sock.sendall(HOSTILE_OPENINGS[name])
        assert _echo(listener.port), "a modality is not served while a hostile peer is connected"
        assert _closed_by_peer(sock, CLOSE_WITHIN_S), f"{name}: the listener kept the connection open"
    finally:
        sock.close()
    assert _echo(listener.port), "a modality is not served after a hostile peer"


def test_stalled_connections_do_not_exhaust_the_association_limit(listener):
    """More silent connections than max_associations: they time out and the slots come back."""
    stalled = [socket.create_connection(("127.0.0.1", listener.port), timeout=5)
               for _ in range(listener.settings.max_associations + 2)]
    try:
        assert all(_closed_by_peer(s, CLOSE_WITHIN_S) for s in stalled)
    finally:
        for s in stalled:
            s.close()
    assert _echo(listener.port)


def test_association_stalled_mid_dimse_is_aborted(listener):
    """An established association that goes quiet (a peer stuck or a slowloris) is released."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
    assert assoc.is_established
    end = time.monotonic() + CLOSE_WITHIN_S
    while assoc.is_alive() and time.monotonic() < end:
        time.sleep(0.1)
    try:
        assert not assoc.is_alive(), "the listener kept a silent association"
        assert assoc.is_aborted or assoc.is_released
    finally:
        if assoc.is_alive():
            assoc.abort()
    assert _echo(listener.port)


# -- hostile C-STORE requests --------------------------------------------------------------------------------
def _image(study: str, series: str, sop: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE_STORAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "SECRET^PATIENT", "ID-987654"
    ds.Modality = "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    return ds


HOSTILE_UIDS = st.one_of(
    st.sampled_from(["", "../../x", "..", "/etc/passwd", "1.2/../../3", "1.2.3\x00", "1.2.3 ", "C:\\x",
                     "1" * 65, "9" * 65536, "1..2", ".1.2", "1.2.", "01.2", "1.2.3\n4", "~root"]),
    st.text(alphabet="0123456789./\\\x00 -", min_size=1, max_size=80),
)


def _files_outside(root: Path, allowed: Path) -> list[Path]:
    allowed = allowed.resolve()
    return [p for p in root.rglob("*") if p.is_file() and allowed not in p.resolve().parents]


def test_hostile_uids_by_c_store_never_escape_the_spool(listener, tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG, logger="llnm")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(US_IMAGE_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    spool_root = listener.spool.root
    outside_before = set(_files_outside(tmp_path, spool_root))
    statuses: list[int] = []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.sampled_from(["study", "series", "sop", "sop_dataset_only"]), HOSTILE_UIDS)
    def check(where: str, bad: str):
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        ds = _image(study, series, sop)
        if where == "study":
            ds.StudyInstanceUID = bad
        elif where == "series":
            ds.SeriesInstanceUID = bad
        elif where == "sop":
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = bad
        else:
            ds.SOPInstanceUID = bad
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
        assert assoc.is_established
        try:
            try:
                response = assoc.send_c_store(copy.deepcopy(ds))
            except (ValueError, AttributeError, TypeError):
                return  # pynetdicom will not encode this request: it cannot reach a listener from here
            status = int(response.Status) if "Status" in response else None
        finally:
            if assoc.is_alive():
                assoc.release()
        statuses.append(status)
        # None: pynetdicom refused to send it, or the association ended (both leave nothing stored)
        assert status is None or status == 0 or status >= 0xA000, f"unexpected status {status:#06x}"
        if status == 0:  # accepted: only because every UID it carries is valid, and stored under them
            for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
                assert validate_uid(uid) == str(uid).strip("\x00 ")
            assert listener.spool.instances(validate_uid(ds.StudyInstanceUID))
        assert set(_files_outside(tmp_path, spool_root)) <= outside_before | set(
            _files_outside(listener.settings.data_dir, spool_root)), "a file was written outside the spool"
        for path in spool_root.rglob("*"):
            assert spool_root.resolve() in path.resolve().parents

    check()
    refused = [s for s in statuses if s is not None and s != 0]
    assert refused, "no hostile UID was refused"
    warnings = [r for r in caplog.records if r.name.startswith("llnm") and r.levelno >= logging.WARNING]
    assert len(warnings) >= len(refused), "a refused instance without its log line"
    said = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    said += generate_latest(metrics.REGISTRY).decode()
    for secret in ("SECRET^PATIENT", "SECRET", "ID-987654"):
        assert secret not in said
    assert _echo(listener.port)


def test_instance_over_the_size_limit_is_refused_and_not_spooled(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM", bind_address="127.0.0.1",
                        series_idle_s=30, study_idle_s=30, metrics_port=0, min_free_disk_mb=1,
                        network_timeout_s=10, max_instance_mb=1)
    running = Listener(settings, lambda uid: "task", completion_interval_s=0.05).start()
    try:
        big, small = _image("1.2.3", "1.2.3.1", "1.2.3.1.1"), _image("1.2.3", "1.2.3.1", "1.2.3.1.2")
        big.Rows = big.Columns = 1500  # 2.25 MB of pixels
        big.PixelData = bytes(1500 * 1500)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(US_IMAGE_STORAGE, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", running.port, ae_title="LLNM")
        assert assoc.is_established
        try:
            assert int(assoc.send_c_store(big).Status) == 0xA700  # Out of Resources: the sender may retry
            assert int(assoc.send_c_store(small).Status) == 0
        finally:
            assoc.release()
        assert [p.name for p in running.spool.instances("1.2.3")] == ["1.2.3.1.2.dcm"]
    finally:
        running.stop()
