"""What one association can cost the listener: memory (a data set is received into a file, a PDU is capped),
disk (an instance stops growing at the size limit; a half-received one is removed), and metric labels
(bounded even with an open allow-list)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from llnm.config import Settings
from llnm.listener.access import MAX_OPEN_LABELS, parse_access
from llnm.listener.app import MAX_PDU_BYTES, Listener
from llnm.listener.incoming import IncomingFile
from llnm.observability import metrics

from .conftest import free_port

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
VERIFICATION = "1.2.840.10008.1.1"



def _settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM", bind_address="127.0.0.1",
                  series_idle_s=30, study_idle_s=30, metrics_port=0, min_free_disk_mb=1, network_timeout_s=10)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def start(tmp_path: Path):
    started: list[Listener] = []

    def run(**overrides) -> Listener:
        listener = Listener(_settings(tmp_path, **overrides), lambda uid: "task", completion_interval_s=0.05).start()
        started.append(listener)
        return listener

    yield run
    for listener in started:
        listener.stop()


def _big_instance(path: Path, frames: int, rows: int = 1000, cols: int = 1200) -> tuple[str, int]:
    """A multi-frame ultrasound file of frames x rows x cols bytes of pixels; returns (study UID, bytes)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 255, frames * rows * cols, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID), frames * rows * cols


SENDER = """
import sys
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True  # the sender's memory is not what is measured
ae = AE(ae_title="MODALITY")
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.1.2.1")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="LLNM")
status = assoc.send_c_store(sys.argv[2])
print(hex(int(status.Status)) if status and "Status" in status else "none", flush=True)
assoc.release()
"""


def _send_in_subprocess(port: int, path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SENDER, str(port), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_large_instance_is_received_into_a_file_not_into_memory(start, tmp_path: Path):
    listener = start(max_instance_mb=100)
    study_uid, pixels = _big_instance(tmp_path / "big.dcm", frames=40)  # 48 MB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        sender = _send_in_subprocess(listener.port, tmp_path / "big.dcm")
        out, err = sender.communicate(timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.strip() == "0x0", err[-2000:]
    stored = listener.spool.instances(study_uid)
    assert len(stored) == 1 and stored[0].stat().st_size >= pixels
    assert pydicom.dcmread(stored[0]).PixelData == pydicom.dcmread(tmp_path / "big.dcm").PixelData
    assert peak < 16 * 1024 * 1024, f"the listener held {peak / 2**20:.0f} MiB while receiving a 48 MB instance"
    assert not list(listener.incoming.directory.iterdir())


def test_an_oversized_instance_stops_growing_at_the_limit():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        f = IncomingFile(Path(folder), limit_bytes=1000)
        for _ in range(10):
            f.write(b"x" * 300)
        assert f.oversized and f.size == 3000
        f.file.flush()
        assert os.path.getsize(f.name) == 0  # what was written is given back, the rest dropped
        f.discard()
        assert not os.listdir(folder)


def test_an_oversized_instance_is_refused_and_leaves_nothing(start, tmp_path: Path):
    listener = start(max_instance_mb=2)
    study_uid, _ = _big_instance(tmp_path / "big.dcm", frames=4)  # 4.8 MB
    sender = _send_in_subprocess(listener.port, tmp_path / "big.dcm")
    out, err = sender.communicate(timeout=120)
    assert out.strip() == "0xa700", err[-2000:]
    assert not listener.spool.instances(study_uid)
    assert not list(listener.incoming.directory.iterdir())


def test_an_association_killed_mid_instance_leaves_no_partial_file(start, tmp_path: Path):
    listener = start(max_instance_mb=1000)
    _big_instance(tmp_path / "big.dcm", frames=200)  # 240 MB: still arriving when the sender dies
    sender = _send_in_subprocess(listener.port, tmp_path / "big.dcm")
    incoming = listener.incoming.directory
    deadline = time.monotonic() + 60
    while not list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(incoming.iterdir()), "the instance never started arriving"
    os.kill(sender.pid, signal.SIGKILL)
    sender.wait()
    deadline = time.monotonic() + 30
    while list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(incoming.iterdir()), "a half-received instance was left behind"
    assert not list(listener.spool.root.rglob("*.dcm"))


def test_a_pdu_over_the_limit_is_not_read_into_memory(start):
    """A peer announcing a 64 MiB PDU and sending it at full speed is disconnected (before: read whole)."""
    listener = start()
    body = struct.pack(">HH", 1, 0) + b"LLNM".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
    header = struct.pack(">BBI", 0x01, 0, 64 * 1024 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        with pytest.raises(OSError):
            sock.sendall(header + body)
            chunk = bytes(1024 * 1024)
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.recv(1)  # only reached if everything was taken
            raise AssertionError("the listener read a 64 MiB PDU")
    assert sent < 64 * 1024 * 1024
    assert MAX_PDU_BYTES <= 4 * 1024 * 1024


def test_a_store_request_without_affected_sop_uid_is_refused_not_crashed(start, tmp_path: Path):
    listener = start()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ""
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(US_MULTIFRAME, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(ds).Status) == 0xC000
    finally:
        assoc.release()
    assert not list(listener.incoming.directory.iterdir())


def test_metric_labels_are_bounded_with_an_open_allow_list(start):
    policy = parse_access("", 1.0, 1.0)
    labels = {policy.metric_label(f"SCAN{i}") for i in range(1000)}
    assert len(labels) == MAX_OPEN_LABELS + 1 and "other" in labels
    assert policy.metric_label("SCAN0") == "SCAN0"  # the first ones seen keep their label
    closed = parse_access("US1", 1.0, 1.0)
    assert closed.metric_label("US1") == "US1" and closed.metric_label("SCAN0") == "other"
    # over the network: 40 scanners' associations add at most MAX_OPEN_LABELS label values
    listener = start(allowed_aes="", max_associations=4)
    for i in range(40):
        ae = AE(ae_title=f"PROBE{i:03d}")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
        assert assoc.is_established
        assoc.release()
    values = {s.labels["calling_ae"] for fam in metrics.REGISTRY.collect() if fam.name == "llnm_associations"
              for s in fam.samples if s.labels.get("calling_ae", "").startswith("PROBE")}
    assert 0 < len(values) <= MAX_OPEN_LABELS
