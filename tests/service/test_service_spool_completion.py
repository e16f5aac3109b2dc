"""The spool's durable, safe writes and the completion timers' bookkeeping (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.listener.access import parse_access
from llnm.listener.completion import CompletionTracker
from llnm.storage.names import InvalidUID, validate_uid
from llnm.storage.spool import OutOfResources, Spool

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2.3/../4", "1.2.a", "", "1..2", "01.2", "1." * 40 + "1",
                                 "/abs", "1.2 3"])
def test_invalid_uids_never_become_paths(tmp_path: Path, bad: str):
    spool = Spool(tmp_path / "spool", min_free_mb=0)
    with pytest.raises(InvalidUID):
        spool.store(bad, SERIES, SOP, b"x")
    with pytest.raises(InvalidUID):
        spool.store(STUDY, SERIES, bad, b"x")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_uid_padding_is_stripped():
    assert validate_uid("1.2.840.10008\x00") == "1.2.840.10008"


def test_store_writes_atomically_under_uid_names(tmp_path: Path):
    spool = Spool(tmp_path, min_free_mb=0)
    stored = spool.store(STUDY, SERIES, SOP, b"DICM-data")
    assert stored.path == tmp_path / STUDY / SERIES / f"{SOP}.dcm"
    assert stored.path.read_bytes() == b"DICM-data" and not stored.duplicate
    assert not list(tmp_path.rglob(".tmp-*"))
    assert spool.instances(STUDY) == [stored.path]


def test_duplicate_policy_overwrite_replaces_and_discard_keeps_first(tmp_path: Path):
    over = Spool(tmp_path / "o", min_free_mb=0, duplicate_policy="overwrite")
    over.store(STUDY, SERIES, SOP, b"first")
    second = over.store(STUDY, SERIES, SOP, b"second")
    assert second.duplicate and second.written and second.path.read_bytes() == b"second"
    keep = Spool(tmp_path / "d", min_free_mb=0, duplicate_policy="discard")
    keep.store(STUDY, SERIES, SOP, b"first")
    again = keep.store(STUDY, SERIES, SOP, b"second")
    assert again.duplicate and not again.written and again.path.read_bytes() == b"first"
    with pytest.raises(ValueError):
        Spool(tmp_path / "x", duplicate_policy="sometimes")


def test_watermark_refuses_before_the_disk_fills(tmp_path: Path):
    spool = Spool(tmp_path, min_free_mb=10**9)  # a petabyte free required: never satisfied
    with pytest.raises(OutOfResources):
        spool.store(STUDY, SERIES, SOP, b"x")
    assert not list(tmp_path.rglob("*.dcm"))


def test_write_error_is_out_of_resources(tmp_path: Path):
    spool = Spool(tmp_path, min_free_mb=0)
    (tmp_path / STUDY).write_text("a file where the study folder should be")
    with pytest.raises(OutOfResources):
        spool.store(STUDY, SERIES, SOP, b"x")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tracker(tmp_path: Path, clock: Clock, allowed: str = "") -> tuple[CompletionTracker, AuditTrail]:
    audit = AuditTrail(tmp_path / "llnm.sqlite3")
    policy = parse_access(allowed, series_idle_s=1.0, study_idle_s=2.0)
    return CompletionTracker(audit, policy, clock=clock), audit


def test_study_completes_after_series_then_study_idle_and_is_queued_once(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    calls: list[str] = []
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    tracker.instance_received(STUDY, SERIES + ".1", "US1", "report")
    clock.now += 1.5  # series idle passed, study idle not
    assert tracker.poll(calls.append) == [] and calls == []
    assert [e["event"] for e in audit.events(STUDY)].count("series complete") == 2
    clock.now += 1.6
    assert tracker.poll(calls.append) == [STUDY]
    clock.now += 100
    assert tracker.poll(calls.append) == []
    assert calls == [STUDY]
    row = audit.study(STUDY)
    assert row["state"] == A.QUEUED and row["instances"] == 2 and row["calling_ae"] == "US1"


def test_new_instance_resets_the_timers(tmp_path: Path):
    clock = Clock()
    tracker, _ = _tracker(tmp_path, clock)
    calls: list[str] = []
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    clock.now += 2.9
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    clock.now += 2.9
    assert tracker.poll(calls.append) == []
    clock.now += 0.2
    assert tracker.poll(calls.append) == [STUDY]


def test_per_calling_ae_timers(tmp_path: Path):
    clock = Clock()
    tracker, _ = _tracker(tmp_path, clock, allowed="FAST;series_idle_s=0.1;study_idle_s=0.1,SLOW")
    calls: list[str] = []
    tracker.instance_received("1.1", "1.1.1", "FAST", "image")
    tracker.instance_received("1.2", "1.2.1", "SLOW", "image")
    clock.now += 0.5
    assert tracker.poll(calls.append) == ["1.1"]
    clock.now += 3
    assert tracker.poll(calls.append) == ["1.2"]


def test_bookkeeping_survives_a_restart(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    audit.close()
    clock.now += 10  # the listener was down while the timers ran out
    restarted, _ = _tracker(tmp_path, clock)
    calls: list[str] = []
    assert restarted.poll(calls.append) == [STUDY]


def test_crash_between_marking_and_queueing_queues_again(tmp_path: Path):
    clock = Clock()
    tracker, _ = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    clock.now += 10

    def crash(uid: str) -> str:
        raise ConnectionError("broker down")

    assert tracker.poll(crash) == []  # enqueue failed: still pending, retried later
    assert tracker.waiting() == 1
    calls: list[str] = []
    clock.now += 10
    assert tracker.poll(calls.append) == [STUDY] and tracker.waiting() == 0


def test_own_output_never_starts_or_reopens_a_study(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "PACS", "own_output")
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [] and audit.study(STUDY) is None
    tracker.instance_received(STUDY, SERIES, "PACS", "image")
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY]
    audit.set_state(STUDY, A.DONE)
    tracker.instance_received(STUDY, "9.9", "PACS", "own_output")
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [] and audit.study(STUDY)["state"] == A.DONE


def test_study_without_images_is_recorded_as_ignored(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "PACS", "ignored:modality CT is not US")
    tracker.instance_received(STUDY, SERIES, "PACS", "report")
    clock.now += 10
    calls: list[str] = []
    assert tracker.poll(calls.append) == [] and calls == []
    assert audit.study(STUDY)["state"] == A.IGNORED
    ignored = [e for e in audit.events(STUDY) if e["event"] == "ignored"][0]
    assert ignored["ignored"] == {"modality CT is not US": 1}


def test_duplicate_after_completion_does_not_reopen(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    clock.now += 10
    tracker.poll(lambda uid: None)
    audit.set_state(STUDY, A.DONE)
    tracker.instance_received(STUDY, SERIES, "US1", "image", duplicate=True)
    assert tracker.waiting() == 0 and audit.study(STUDY)["state"] == A.DONE
    tracker.instance_received(STUDY, SERIES, "US1", "image")  # a new instance reopens it
    assert tracker.waiting() == 1 and audit.study(STUDY)["state"] == A.RECEIVING


def test_a_reopened_study_counts_every_instance_it_holds(tmp_path: Path):
    """The study's instance count is what the spool holds for it, over every round: a study completed
    early (a slow sender) and reopened by its last instances still reports all of them."""
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    for sop in ("1.2.3.1", "1.2.3.2"):
        tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid=sop)
    clock.now += 10
    tracker.poll(lambda uid: None)
    audit.set_state(STUDY, A.DONE)
    tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid="1.2.3.2")  # a resend: no reopening
    assert audit.study(STUDY)["state"] == A.DONE and audit.study(STUDY)["instances"] == 2
    tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid="1.2.3.3")
    assert audit.study(STUDY)["state"] == A.RECEIVING and audit.study(STUDY)["instances"] == 3
    assert tracker.instances(STUDY) == 1  # the round's own count (the per-study limit, completion) restarts


def test_access_policy():
    policy = parse_access("US1@10.0.0.5,US1@::ffff:10.0.0.6,ANY", 1.0, 2.0)
    assert policy.allows("US1", "10.0.0.5") and policy.allows("US1", "10.0.0.6")
    assert not policy.allows("US1", "10.0.0.7") and not policy.allows("EVIL", "10.0.0.5")
    assert policy.allows("ANY", "192.168.1.1")
    assert policy.metric_label("EVIL") == "other" and policy.metric_label("US1") == "US1"
    assert parse_access("", 1.0, 2.0).allows("WHOEVER", "1.2.3.4")
    with pytest.raises(ValueError, match="unknown option"):
        parse_access("US1;colour=blue", 1.0, 2.0)


def test_a_report_arriving_after_processing_runs_the_study_again(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image")
    clock.now += 10
    assert tracker.poll(lambda uid: "t1") == [STUDY]
    audit.set_state(STUDY, A.DONE)
    tracker.instance_received(STUDY, "1.2.3.4.9", "US1", "report")
    clock.now += 10
    assert tracker.poll(lambda uid: "t2") == [STUDY] and audit.study(STUDY)["state"] == A.QUEUED


def test_an_instance_that_is_not_analysed_never_reopens_a_study_with_a_result(tmp_path: Path):
    """A presentation state or another system's key object arriving after the result would only run the
    study again and add an "ignored" warning to a result that then supersedes the one sent."""
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid="1.1")
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY]
    audit.set_state(STUDY, A.DONE)
    tracker.instance_received(STUDY, "9.9", "PACS", "ignored:modality PR is not US", sop_uid="1.2")
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [] and audit.study(STUDY)["state"] == A.DONE
    assert [e["event"] for e in audit.events(STUDY)][-1] == "not analysed, study not reopened"
    tracker.instance_received(STUDY, "9.9", "PACS", "report", sop_uid="1.3")  # a report still does
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY]


def test_a_corrected_resend_after_completion_reopens_the_study_an_identical_one_does_not(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    spool = Spool(tmp_path / "spool", min_free_mb=0)

    def receive(data: bytes) -> None:
        stored = spool.store(STUDY, SERIES, SOP, data)
        tracker.instance_received(STUDY, SERIES, "US1", "image", duplicate=stored.duplicate, sop_uid=SOP,
                                  changed=stored.changed)

    receive(b"first")
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY]
    audit.set_state(STUDY, A.DONE)
    receive(b"first")  # the same bytes again: nothing new to analyse
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [] and audit.study(STUDY)["state"] == A.DONE
    receive(b"corrected")  # the spool now holds other bytes than the result was computed from
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY] and audit.study(STUDY)["instances"] == 1


def test_a_resend_right_after_a_discard_opens_the_study_again(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid=SOP)
    assert audit.discard(STUDY, "op", "operator")
    tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid=SOP)  # before any sweep forgets it
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY] and audit.study(STUDY)["state"] == A.QUEUED


def test_retries_while_the_broker_is_down_record_the_completion_once(tmp_path: Path):
    clock = Clock()
    tracker, audit = _tracker(tmp_path, clock)
    tracker.instance_received(STUDY, SERIES, "US1", "image")

    def broker_down(uid: str) -> str:
        raise ConnectionError("broker")

    for _ in range(4):
        clock.now += 10
        assert tracker.poll(broker_down) == []
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY]
    events = [e["event"] for e in audit.events(STUDY)]
    assert events.count("study complete") == 1 and audit.study(STUDY)["state"] == A.QUEUED


def test_retention_never_removes_an_instance_stored_while_it_decides(tmp_path: Path):
    """The listener holds the spool's shared lock from the write to the record; retention checks again
    under the exclusive lock, so a study reopened meanwhile keeps its files."""
    import threading
    import time

    from llnm.config import Settings
    from llnm.worker.maintenance import apply_retention

    settings = Settings(data_dir=tmp_path / "data", min_free_disk_mb=0, retention_hours=1.0)
    clock = Clock()
    clock.now = time.time()
    audit = AuditTrail.for_data_dir(settings.data_dir)
    tracker = CompletionTracker(audit, parse_access("", 1.0, 2.0), clock=clock)
    spool = Spool(settings.spool_dir, min_free_mb=0)
    spool.store(STUDY, SERIES, SOP, b"old")
    tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid=SOP)
    clock.now += 10
    assert tracker.poll(lambda uid: "t") == [STUDY]
    audit.set_state(STUDY, A.DONE)
    later = time.time() + 7200
    removed: list[list[str]] = []
    with spool.receiving():  # the listener, mid-store of a resent instance
        worker = threading.Thread(target=lambda: removed.append(apply_retention(settings, audit, now=later)))
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive()  # retention waits for the store to be recorded
        stored = spool.store(STUDY, SERIES, "1.2.3.4.5.7", b"new")
        tracker.instance_received(STUDY, SERIES, "US1", "image", sop_uid="1.2.3.4.5.7")
    worker.join(10)
    assert removed == [[]] and stored.path.exists() and audit.study(STUDY)["state"] == A.RECEIVING


def test_a_spool_on_a_file_system_without_locks_still_stores(tmp_path: Path, monkeypatch):
    """flock refused (ENOLCK, as some network file systems answer): the listener's store goes on."""
    import errno
    import fcntl

    def no_locks(fd, mode):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    spool = Spool(tmp_path, min_free_mb=0)
    with spool.receiving():
        stored = spool.store(STUDY, SERIES, SOP, b"DICM-data")
    with spool.removing():
        pass
    assert stored.path.read_bytes() == b"DICM-data"
