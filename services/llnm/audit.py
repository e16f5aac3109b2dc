"""Per-study audit trail: where each study is (its state) and everything that happened to it (events).

One SQLite file, `<data_dir>/llnm.sqlite3` (WAL mode), shared by the listener and the worker on the same
volume. It holds UIDs, AE titles, counts, timings and results (probability, risk level), never patient
names, IDs or dates of birth. `llnm status UID` and `llnm studies` read it; the embedded queue of
`llnm serve` is the `queued` state of this table. Failures are recorded through `error_text`, which never
copies a library's exception message (pydicom and highdicom quote the values they choke on).

States: receiving -> queued -> processing -> sending -> done; or ignored (no ultrasound image), or
failed (dead letter: `llnm requeue` sets it to queued again).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

RECEIVING = "receiving"
QUEUED = "queued"
PROCESSING = "processing"
SENDING = "sending"
DONE = "done"
IGNORED = "ignored"
FAILED = "failed"
STATES = (RECEIVING, QUEUED, PROCESSING, SENDING, DONE, IGNORED, FAILED)
#: States from which a study runs no more work unless something new arrives or it is requeued.
FINAL_STATES = (DONE, IGNORED, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    calling_ae TEXT,
    instances INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    task_id TEXT,
    error TEXT,
    probability REAL,
    risk_level INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, next_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_study ON events(study_uid, id);
"""

_STUDY_FIELDS = ("calling_ae", "instances", "attempts", "send_attempts", "next_at", "task_id", "error",
                 "probability", "risk_level")


def error_text(exc: BaseException) -> str:
    """What the audit trail, and so `llnm status` and `llnm studies`, says about a failure: the exception
    type, with its message only where that message is ours and fixed (a class with `audit_safe = True`),
    or an OSError's errno text without file names. Never another message: pydicom and highdicom quote
    the header value they failed on ("Unable to convert '1970-01-01' to 'DA' object")."""
    name = type(exc).__name__
    if getattr(type(exc), "audit_safe", False):
        return f"{name}: {str(exc)[:300]}"
    if isinstance(exc, OSError) and exc.errno:
        return f"{name}: {os.strerror(exc.errno)}"
    return name


def db_path(data_dir: Path) -> Path:
    return Path(data_dir) / "llnm.sqlite3"


def connect(path: Path) -> sqlite3.Connection:
    """A connection usable from several threads (callers serialise with their own lock)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class AuditTrail:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> "AuditTrail":
        return cls(db_path(data_dir))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: other processes wait on the busy timeout, never see half a change."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------------------
    def event(self, study_uid: str, event: str, **detail: Any) -> None:
        with self.transaction() as c:
            self.add_event(c, study_uid, event, detail)

    @staticmethod
    def add_event(c: sqlite3.Connection, study_uid: str, event: str, detail: dict[str, Any]) -> None:
        """Append an event inside an open `transaction()`."""
        c.execute("INSERT INTO events(study_uid, ts, event, detail) VALUES (?, ?, ?, ?)",
                  (study_uid, time.time(), event, json.dumps(detail, default=str, sort_keys=True)))

    def set_state(self, study_uid: str, state: str, event: str | None = None,
                  detail: dict[str, Any] | None = None, **fields: Any) -> None:
        """Create or update the study row; `fields` are columns (attempts, error, task_id ...)."""
        with self.transaction() as c:
            self.put_state(c, study_uid, state, fields)
            if event:
                self.add_event(c, study_uid, event, detail or {})

    @staticmethod
    def put_state(c: sqlite3.Connection, study_uid: str, state: str, fields: dict[str, Any]) -> None:
        """Create or update the study row inside an open `transaction()`."""
        if state not in STATES:
            raise ValueError(f"unknown study state {state!r}")
        unknown = set(fields) - set(_STUDY_FIELDS)
        if unknown:
            raise ValueError(f"unknown study fields {sorted(unknown)}")
        now = time.time()
        c.execute("INSERT OR IGNORE INTO studies(study_uid, state, created_at, updated_at) VALUES (?, ?, ?, ?)",
                  (study_uid, state, now, now))
        sets = ", ".join(["state = ?", "updated_at = ?"] + [f"{k} = ?" for k in fields])
        c.execute(f"UPDATE studies SET {sets} WHERE study_uid = ?", (state, now, *fields.values(), study_uid))

    def transition(self, study_uid: str, from_states: tuple[str, ...], state: str, event: str | None = None,
                   detail: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Set `state` only if the study is now in one of `from_states`; True if it was changed."""
        with self.transaction() as c:
            row = c.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None or row["state"] not in from_states:
                return False
            self.put_state(c, study_uid, state, fields)
            if event:
                self.add_event(c, study_uid, event, detail or {})
            return True

    def claim_due(self, from_state: str, to_state: str, lease_s: float = 0.0,
                  now: float | None = None) -> dict[str, Any] | None:
        """Atomically move the oldest due study in `from_state` to `to_state` (the embedded queue).
        With `lease_s`, the study is not due again for that long (a claim within the same state)."""
        now = time.time() if now is None else now
        with self.transaction() as c:
            row = c.execute(
                "SELECT * FROM studies WHERE state = ? AND next_at <= ? ORDER BY next_at, updated_at LIMIT 1",
                (from_state, now)).fetchone()
            if row is None:
                return None
            self.put_state(c, row["study_uid"], to_state, {"next_at": now + lease_s} if lease_s else {})
            out = dict(row)
            out["state"] = to_state
            return out

    def reset_states(self, from_state: str, to_state: str, event: str) -> list[str]:
        """Move every study in `from_state` to `to_state` (start-up recovery of interrupted work)."""
        with self.transaction() as c:
            uids = [r["study_uid"] for r in c.execute("SELECT study_uid FROM studies WHERE state = ?",
                                                      (from_state,))]
            for uid in uids:
                self.put_state(c, uid, to_state, {})
                self.add_event(c, uid, event, {"from": from_state})
        return uids

    # -- reading -------------------------------------------------------------------------------------
    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A read outside any write transaction (WAL readers never wait for the writer)."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return dict(row) if row else None

    def events(self, study_uid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT ts, event, detail FROM events WHERE study_uid = ? ORDER BY id",
                                      (study_uid,)).fetchall()
        return [{"ts": r["ts"], "event": r["event"], **json.loads(r["detail"])} for r in rows]

    def studies(self, states: tuple[str, ...] | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            if states:
                marks = ",".join("?" * len(states))
                rows = self._conn.execute(
                    f"SELECT * FROM studies WHERE state IN ({marks}) ORDER BY updated_at DESC LIMIT ?",
                    (*states, limit)).fetchall()
            else:
                rows = self._conn.execute("SELECT * FROM studies ORDER BY updated_at DESC LIMIT ?",
                                          (limit,)).fetchall()
        return [dict(r) for r in rows]

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) AS n FROM studies GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}
