"""The spool's disk nearly full, for real: the spool is a small tmpfs. The listener answers Out of Resources
(0xA700, the sender keeps the instance) both at its free-space watermark and when a write itself hits
ENOSPC mid-instance, leaves no partial file, keeps the association usable, and takes instances again by
itself once space is freed (no restart).

Mounting needs root (CAP_SYS_ADMIN); without it these tests skip, and the watermark alone is covered by
tests/service/test_service_listener.py."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from support import make_us  # noqa: E402

from llnm.config import Settings  # noqa: E402
from llnm.listener.app import Listener  # noqa: E402

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
TMPFS_MB = 8
PIXELS = 1000  # a 1000 x 1000 frame: about 1 MB per instance


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def small_spool(tmp_path: Path):
    """`<data>/spool` is an 8 MB tmpfs (the audit database stays on the normal disk)."""
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(spool)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {run.stderr.strip()[:200]}")
    try:
        yield tmp_path / "data"
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def _listener(data_dir: Path, min_free_mb: int) -> Listener:
    settings = Settings(data_dir=data_dir, port=_free_port(), ae_title="LLNM", bind_address="127.0.0.1",
                        series_idle_s=30, study_idle_s=30, metrics_port=0, min_free_disk_mb=min_free_mb,
                        network_timeout_s=10)
    return Listener(settings, lambda uid: "task", completion_interval_s=0.05).start()


def _ballast(spool: Path, leave_mb: float) -> Path:
    """Fill the tmpfs until about `leave_mb` is free (another tenant of the disk)."""
    path = spool / "ballast"
    free = shutil.disk_usage(spool).free
    with open(path, "wb") as fh:
        fh.write(bytes(max(0, int(free - leave_mb * 1024 * 1024))))
    return path


class Sender:
    """One association, many C-STOREs: a failure status must not end it."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.6.1", ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        self.assoc = ae.associate("127.0.0.1", port, ae_title="LLNM")
        assert self.assoc.is_established

    def store(self, ds) -> int:
        status = self.assoc.send_c_store(ds)
        assert status and "Status" in status, "the association ended instead of answering"
        return int(status.Status)

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def _leftovers(spool: Path) -> list[Path]:
    """Partial or temporary files: what a refused instance must not leave behind."""
    return [p for p in spool.rglob("*") if p.is_file() and (p.name.startswith((".in-", ".tmp-")))]


@pytest.mark.parametrize("min_free_mb", [2, 0], ids=["watermark", "enospc-mid-instance"])
def test_disk_nearly_full_answers_out_of_resources_and_recovers_by_itself(small_spool: Path, min_free_mb: int,
                                                                          caplog):
    caplog.set_level(logging.INFO, logger="llnm")
    listener = _listener(small_spool, min_free_mb)
    spool = listener.spool.root
    study, series = generate_uid(), generate_uid()
    images = [make_us(study, series, size=PIXELS) for _ in range(4)]
    sender = Sender(listener.port)
    try:
        ballast = _ballast(spool, leave_mb=min_free_mb + 1.5)  # room for one instance, not two
        statuses = [sender.store(ds) for ds in images[:3]]
        assert statuses[0] == SUCCESS and OUT_OF_RESOURCES in statuses[1:], statuses
        refused = [ds for ds, s in zip(images, statuses) if s != SUCCESS]
        assert all(s in (SUCCESS, OUT_OF_RESOURCES) for s in statuses)
        assert not _leftovers(spool), _leftovers(spool)
        stored = {p.stem for p in listener.spool.instances(study)}
        assert stored == {str(ds.SOPInstanceUID) for ds, s in zip(images, statuses) if s == SUCCESS}
        assert listener.audit.study(study)["instances"] == len(stored)
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        expected = "spool cannot store it" if min_free_mb else "could not write it while receiving"
        assert any(expected in m for m in said), said

        ballast.unlink()  # the operator frees space; nothing is restarted
        assert [sender.store(ds) for ds in refused + images[3:]] == [SUCCESS] * (len(refused) + 1)
    finally:
        sender.close()
        listener.stop()
    assert {p.stem for p in listener.spool.instances(study)} == {str(ds.SOPInstanceUID) for ds in images}
    assert listener.audit.study(study)["instances"] == len(images)
    assert not _leftovers(spool)
    for path in listener.spool.instances(study):  # every stored file is whole
        assert os.path.getsize(path) > PIXELS * PIXELS
