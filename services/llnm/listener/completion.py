"""Study completion: when has a study stopped arriving?

A series is complete when no instance of it arrived for `series_idle_s`; the study is complete when every
series is complete and nothing arrived for a further `study_idle_s` (so: last instance + series idle +
study idle). Both timers can be set per calling AE (see `llnm.listener.access`).

The bookkeeping is in the audit database (tables `pending_studies`, `pending_series`), written in the same
transaction as each instance's arrival, so a study received before a crash is still completed and queued
after the listener restarts. Queueing is crash-safe: the study is marked `enqueuing` before the queue call
and forgotten only after it; a crash in between queues it again on restart (at least once; the worker's
outbox makes a repeat send nothing twice).

Instance kinds (from `llnm.dicom.classify_instance`): "image" and "report" make or extend a study (only images make it worth processing);
"ignored:<reason>" instances are recorded (a study of only those ends as `ignored`); "own_output" (our SR,
SEG or key image coming back) never starts, extends or reopens a study.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Callable

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.listener.access import AccessPolicy
from llnm.observability import metrics
from llnm.observability.logs import get_logger

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'receiving',
    calling_ae TEXT NOT NULL,
    series_idle_s REAL NOT NULL,
    study_idle_s REAL NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    ignored TEXT NOT NULL DEFAULT '{}',
    retry_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS received_instances (
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    PRIMARY KEY (study_uid, sop_uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    last_at REAL NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (study_uid, series_uid)
);
"""

#: Called with a completed study's UID; returns a task id (or None) and raises if it could not queue.
Enqueue = Callable[[str], "str | None"]


class CompletionTracker:
    def __init__(self, audit: AuditTrail, policy: AccessPolicy, clock: Callable[[], float] = time.time,
                 enqueue_retry_s: float = 5.0) -> None:
        self.audit = audit
        self.policy = policy
        self.clock = clock
        self.enqueue_retry_s = enqueue_retry_s
        with audit.transaction() as c:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    c.execute(statement)

    def instance_received(self, study_uid: str, series_uid: str, calling_ae: str, kind: str,
                          duplicate: bool = False, sop_uid: str | None = None, changed: bool = False) -> None:
        """Record one stored instance (call after the spool write, before answering Success).

        With `sop_uid`, whether it is a duplicate is decided here, by what was recorded, not by the
        caller's "the file was already in the spool": a listener killed between the spool write and this
        record leaves the file without the record, and the sender's resend must count as new (else a
        study whose only image that was would end up ignored). `changed`: the spool replaced an earlier copy
        of this instance with other bytes (a corrected resend), which reopens a finished study like a new
        instance. An instance that is not analysed (`ignored:...`) never reopens a study that has a
        result: a presentation state or another system's key object arriving later would only run it
        again and add a warning to its result."""
        if kind == "own_output":
            metrics.OWN_OUTPUT.inc()
            return
        now = self.clock()
        series_idle, study_idle = self.policy.timers(calling_ae)
        is_image = 1 if kind == "image" else 0
        with self.audit.transaction() as c:
            if sop_uid is not None:
                duplicate = c.execute("INSERT OR IGNORE INTO received_instances(study_uid, sop_uid) VALUES (?, ?)",
                                      (study_uid, sop_uid)).rowcount == 0
            pending = c.execute("SELECT ignored FROM pending_studies WHERE study_uid = ?", (study_uid,)).fetchone()
            row = c.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if pending is None and duplicate and not changed and row is not None and row["state"] in A.FINAL_STATES:
                AuditTrail.add_event(c, study_uid, "duplicate after completion", {"calling_ae": calling_ae})
                return  # a resend of what was already processed does not reopen the study
            if pending is None and kind.startswith("ignored") and row is not None \
                    and row["state"] not in (A.IGNORED, A.RECEIVING):
                AuditTrail.add_event(c, study_uid, "not analysed, study not reopened",
                                     {"calling_ae": calling_ae, "reason": kind.partition(":")[2] or "unspecified"})
                return
            if pending is None:
                # A study processed before (done, failed, or on its way) has images in the spool already:
                # a report arriving later makes it worth processing again, with that report.
                had_images = 1 if row is not None and row["state"] not in (A.IGNORED, A.RECEIVING) else 0
                c.execute(
                    "INSERT INTO pending_studies(study_uid, calling_ae, series_idle_s, study_idle_s, first_at,"
                    " last_at, images) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (study_uid, calling_ae, series_idle, study_idle, now, now, had_images))
                if row is None or row["state"] in A.FINAL_STATES:
                    # reopened: the study's count goes on from the instances still recorded in the spool
                    # (a study retention removed starts again from 0), the one being recorded added below
                    kept = 0 if row is None or sop_uid is None else int(c.execute(
                        "SELECT COUNT(*) FROM received_instances WHERE study_uid = ? AND sop_uid != ?",
                        (study_uid, sop_uid)).fetchone()[0])
                    AuditTrail.put_state(c, study_uid, A.RECEIVING, {"calling_ae": calling_ae, "instances": kept})
                    AuditTrail.add_event(c, study_uid, "reopened" if row else "receiving",
                                         {"calling_ae": calling_ae})
                    duplicate = duplicate and not changed  # a corrected resend is the new round's instance
                else:
                    AuditTrail.add_event(c, study_uid, "more instances while queued", {"state": row["state"]})
            ignored = json.loads(pending["ignored"]) if pending else {}
            if kind.startswith("ignored"):
                reason = kind.partition(":")[2] or "unspecified"
                ignored[reason] = ignored.get(reason, 0) + 1
            c.execute(
                "UPDATE pending_studies SET last_at = ?, instances = instances + ?, images = images + ?,"
                " ignored = ?, state = 'receiving' WHERE study_uid = ?",
                (now, 0 if duplicate else 1, 0 if duplicate else is_image, json.dumps(ignored), study_uid))
            c.execute(
                "INSERT INTO pending_series(study_uid, series_uid, last_at, instances) VALUES (?, ?, ?, 1)"
                " ON CONFLICT(study_uid, series_uid) DO UPDATE SET last_at = excluded.last_at,"
                " instances = instances + ?, completed = 0",
                (study_uid, series_uid, now, 0 if duplicate else 1))
            if not duplicate:
                AuditTrail.count_instance(c, study_uid)

    def instances(self, study_uid: str) -> int:
        """Instances received so far in the study's current (pending) round."""
        rows = self.audit.read("SELECT instances FROM pending_studies WHERE study_uid = ?", (study_uid,))
        return int(rows[0]["instances"]) if rows else 0

    def forget_received(self, keep: set[str]) -> int:
        """Drop the per-instance records of studies neither pending nor in `keep` (the studies still in the
        spool): once retention removed a study's files, a resend is new again, as it was before."""
        with self.audit.transaction() as c:
            uids = [r[0] for r in c.execute(
                "SELECT DISTINCT study_uid FROM received_instances WHERE study_uid NOT IN"
                " (SELECT study_uid FROM pending_studies)")]
            gone = [u for u in uids if u not in keep]
            for uid in gone:
                c.execute("DELETE FROM received_instances WHERE study_uid = ?", (uid,))
        return len(gone)

    def waiting(self) -> int:
        return int(self.audit.read("SELECT COUNT(*) FROM pending_studies")[0][0])

    def poll(self, enqueue: Enqueue) -> list[str]:
        """One pass: mark idle series complete, queue every completed study. Returns the queued UIDs."""
        now = self.clock()
        with self.audit.transaction() as c:
            done_series = c.execute(
                "SELECT s.study_uid, s.series_uid, s.instances FROM pending_series s JOIN pending_studies p"
                " USING (study_uid) WHERE s.completed = 0 AND s.last_at + p.series_idle_s <= ?", (now,)
            ).fetchall()
            for r in done_series:
                c.execute("UPDATE pending_series SET completed = 1 WHERE study_uid = ? AND series_uid = ?",
                          (r["study_uid"], r["series_uid"]))
                AuditTrail.add_event(c, r["study_uid"], "series complete",
                                     {"series_uid": r["series_uid"], "instances": r["instances"]})
            due = c.execute(
                "SELECT * FROM pending_studies WHERE retry_at <= ? AND (state = 'enqueuing' OR"
                " last_at + series_idle_s + study_idle_s <= ?) ORDER BY last_at", (now, now)).fetchall()
            for r in due:
                study = c.execute("SELECT state FROM studies WHERE study_uid = ?", (r["study_uid"],)).fetchone()
                if r["state"] == "enqueuing" and study is not None and study["state"] == A.QUEUED:
                    continue  # a retry after the broker refused: marked and recorded already
                c.execute("UPDATE pending_studies SET state = 'enqueuing' WHERE study_uid = ?", (r["study_uid"],))
                if r["images"]:
                    AuditTrail.put_state(c, r["study_uid"], A.QUEUED, {"attempts": 0, "send_attempts": 0,
                                                                       "next_at": 0.0, "error": None})
                    AuditTrail.add_event(c, r["study_uid"], "study complete",
                                         {"instances": r["instances"], "images": r["images"]})
        queued = []
        for r in due:
            uid = r["study_uid"]
            if not r["images"]:
                self._finish(r, A.IGNORED, None)
                metrics.STUDIES_COMPLETED.labels(outcome="ignored").inc()
                log.info("study ignored: no ultrasound image", study_uid=uid, instances=r["instances"],
                         reason=r["ignored"])
                continue
            try:
                task_id = enqueue(uid)
            except Exception as exc:
                metrics.ENQUEUE_ERRORS.inc()
                log.warning("could not queue a completed study; will retry", study_uid=uid,
                            error=type(exc).__name__)
                with self.audit.transaction() as c:
                    c.execute("UPDATE pending_studies SET retry_at = ? WHERE study_uid = ?",
                              (self.clock() + self.enqueue_retry_s, uid))
                continue
            self._finish(r, A.QUEUED, task_id)
            metrics.STUDIES_COMPLETED.labels(outcome="queued").inc()
            log.info("study complete and queued", study_uid=uid, instances=r["instances"], task_id=task_id)
            queued.append(uid)
        return queued

    def _finish(self, r: sqlite3.Row, state: str, task_id: str | None) -> None:
        """Forget the pending study, unless an instance arrived while it was being queued."""
        uid = r["study_uid"]
        with self.audit.transaction() as c:
            current = c.execute("SELECT last_at FROM pending_studies WHERE study_uid = ?", (uid,)).fetchone()
            if state == A.IGNORED:
                row = c.execute("SELECT state FROM studies WHERE study_uid = ?", (uid,)).fetchone()
                if row is not None and row["state"] == A.RECEIVING:
                    AuditTrail.put_state(c, uid, A.IGNORED, {})
                AuditTrail.add_event(c, uid, "ignored", {"reason": "no ultrasound image",
                                                         "instances": r["instances"],
                                                         "ignored": json.loads(r["ignored"])})
            else:
                AuditTrail.put_fields(c, uid, {"task_id": task_id})
                AuditTrail.add_event(c, uid, "queued", {"task_id": task_id})
            if current is not None and current["last_at"] > r["last_at"]:
                c.execute("UPDATE pending_studies SET state = 'receiving', retry_at = 0 WHERE study_uid = ?",
                          (uid,))
            else:
                c.execute("DELETE FROM pending_studies WHERE study_uid = ?", (uid,))
                c.execute("DELETE FROM pending_series WHERE study_uid = ?", (uid,))

    def run(self, enqueue: Enqueue, stop: threading.Event, interval_s: float = 0.5,
            on_pass: Callable[[], None] | None = None) -> None:
        """The completion loop of the listener (a thread); `on_pass` after every pass (its heartbeat)."""
        while not stop.is_set():
            try:
                self.poll(enqueue)
                metrics.STUDIES_WAITING.set(self.waiting())
            except Exception:
                log.exception("completion pass failed")
            if on_pass is not None:
                on_pass()
            stop.wait(interval_s)
