"""A listener killed between the spool write and the audit record of an instance (found by tests/soak):
the file is in the spool, the record is not, the sender got no Success and sends it again. The resend must
count as a new instance, not as a duplicate of what was already processed."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from support import make_us, wait_for

from llnm import audit as A
from llnm.listener.app import Listener


def _store(port: int, ds) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="LLNM")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_resend_of_an_instance_spooled_but_never_recorded_counts(make_settings, tmp_path: Path):
    queued: list[str] = []
    listener = Listener(make_settings(), lambda uid: queued.append(uid) or "task", completion_interval_s=0.05)
    ds = make_us("1.2.3", "1.2.3.1", "1.2.3.1.1")
    path = listener.spool.path_for("1.2.3", "1.2.3.1", "1.2.3.1.1")
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)  # written before the crash; never recorded, never answered
    listener.start()
    try:
        assert _store(listener.port, ds) == 0
        assert wait_for(lambda: queued, 10), "the study was not queued"
        row = listener.audit.study("1.2.3")
        assert row["state"] == A.QUEUED and row["instances"] == 1
        assert _store(listener.port, ds) == 0  # a real duplicate now: not counted again
        assert listener.audit.study("1.2.3")["instances"] == 1
    finally:
        listener.stop()
