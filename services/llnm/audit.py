"""Per-study audit trail: where each study is (its state) and everything that happened to it (events).

One SQLite file, `<data_dir>/llnm.sqlite3` (WAL mode), shared by the listener and the worker on the same
volume. It holds UIDs, AE titles, counts, timings and results (probability, risk level), never patient
names, IDs or dates of birth. `llnm status UID` and `llnm studies` read it; the embedded queue of
`llnm serve` is the `queued` state of this table. Failures are recorded through `error_text`, which never
copies a library's exception message (pydicom and highdicom quote the values they choke on).

States: receiving -> queued -> processing -> sending -> done; or ignored (no ultrasound image, or
discarded from the console), or failed (dead letter: `llnm requeue` sets it to queued again).

For the console (llnm.console) it also keeps each study's result summary (`results`), the radiologists'
feedback (`feedback`) and the pathology outcomes (`outcomes`); operators' actions are events naming who
did them. Only this module writes these tables.
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
    updated_at REAL NOT NULL,
    run_owner TEXT,
    run_until REAL NOT NULL DEFAULT 0
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
CREATE INDEX IF NOT EXISTS events_kind ON events(event, id);
CREATE INDEX IF NOT EXISTS studies_recent ON studies(updated_at, study_uid);
CREATE INDEX IF NOT EXISTS studies_state_recent ON studies(state, updated_at, study_uid);
CREATE INDEX IF NOT EXISTS studies_ae_recent ON studies(calling_ae, updated_at, study_uid);
CREATE TABLE IF NOT EXISTS results (
    study_uid TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    scanner_model TEXT,
    summary TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    agree INTEGER,
    tirads INTEGER,
    size_mm REAL,
    outline TEXT,
    source TEXT NOT NULL DEFAULT 'form'
);
CREATE INDEX IF NOT EXISTS feedback_study ON feedback(study_uid, id);
CREATE TABLE IF NOT EXISTS outcomes (
    study_uid TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    user TEXT NOT NULL,
    llnm INTEGER NOT NULL,
    metastatic_nodes INTEGER,
    largest_node_mm REAL
);
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
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added after a table first shipped (CREATE TABLE IF NOT EXISTS leaves an existing
        table as it was): outcomes.largest_node_mm, studies.run_owner and run_until (`claim_run`)."""
        for table, column, kind in (("outcomes", "largest_node_mm", "REAL"), ("studies", "run_owner", "TEXT"),
                                    ("studies", "run_until", "REAL NOT NULL DEFAULT 0")):
            have = {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

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

    @staticmethod
    def put_fields(c: sqlite3.Connection, study_uid: str, fields: dict[str, Any]) -> None:
        """Set fields of an existing study row inside an open `transaction()`, its state and
        updated_at unchanged (e.g. the task id of a study already queued)."""
        unknown = set(fields) - set(_STUDY_FIELDS)
        if unknown or not fields:
            raise ValueError(f"unknown or no study fields {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        c.execute(f"UPDATE studies SET {sets} WHERE study_uid = ?", (*fields.values(), study_uid))

    @staticmethod
    def count_instance(c: sqlite3.Connection, study_uid: str) -> None:
        """One more instance of the study received, inside an open `transaction()`."""
        c.execute("UPDATE studies SET instances = instances + 1 WHERE study_uid = ?", (study_uid,))

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

    def claim_run(self, study_uid: str, owner: str, lease_s: float, detail: dict[str, Any] | None = None,
                  now: float | None = None) -> bool:
        """Start a run of the study's pipeline (state processing, a "processing" event) unless another
        owner's run holds it and its lease has not expired; True if claimed. The lease is apart from the
        state, which the listener sets to queued when more instances arrive mid-run: two runs of one study
        never overlap (an older run finishing last would supersede the newer result with the older one).
        The same owner claims again (Celery redelivers a killed worker's task with its id)."""
        now = time.time() if now is None else now
        with self.transaction() as c:
            row = c.execute("SELECT run_owner, run_until FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is not None and row["run_owner"] not in (None, owner) and row["run_until"] > now:
                return False
            self.put_state(c, study_uid, PROCESSING, {"task_id": owner})
            c.execute("UPDATE studies SET run_owner = ?, run_until = ? WHERE study_uid = ?",
                      (owner, now + lease_s, study_uid))
            self.add_event(c, study_uid, "processing", detail or {})
            return True

    def release_run(self, study_uid: str, owner: str) -> None:
        """End `owner`'s run of the study (its lease), whatever the state; another owner's run is kept."""
        with self.transaction() as c:
            c.execute("UPDATE studies SET run_owner = NULL, run_until = 0 WHERE study_uid = ? AND run_owner = ?",
                      (study_uid, owner))

    def run_lease(self, study_uid: str) -> tuple[str | None, float]:
        """(owner, until) of the study's current run lease; (None, 0) when none."""
        rows = self.read("SELECT run_owner, run_until FROM studies WHERE study_uid = ?", (study_uid,))
        return (rows[0]["run_owner"], float(rows[0]["run_until"])) if rows else (None, 0.0)

    def release_all_runs(self) -> None:
        """Start-up of the embedded queue: no run of this process's predecessor is alive any more."""
        with self.transaction() as c:
            c.execute("UPDATE studies SET run_owner = NULL, run_until = 0 WHERE run_owner IS NOT NULL")

    def reset_states(self, from_state: str, to_state: str, event: str) -> list[str]:
        """Move every study in `from_state` to `to_state` (start-up recovery of interrupted work)."""
        with self.transaction() as c:
            uids = [r["study_uid"] for r in c.execute("SELECT study_uid FROM studies WHERE state = ?",
                                                      (from_state,))]
            for uid in uids:
                self.put_state(c, uid, to_state, {})
                self.add_event(c, uid, event, {"from": from_state})
        return uids

    def due_now(self, state: str) -> None:
        """Every study in `state` due at once (start-up: a send that was waiting out a backoff when the
        process stopped is tried again now)."""
        with self.transaction() as c:
            c.execute("UPDATE studies SET next_at = 0 WHERE state = ?", (state,))

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

    # -- console: kept results, actions, feedback, outcomes ---------------------------------------------
    def page(self, states: tuple[str, ...] = (), calling_ae: str | None = None, risk_level: int | None = None,
             after: tuple[float, str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """One page of studies, newest first, continuing after (updated_at, study_uid) of the previous page's
        last row: keyset paging on the studies_*_recent indexes, as fast on page 2000 as on page 1."""
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += list(states)
        if calling_ae:
            where.append("calling_ae = ?")
            params.append(calling_ae)
        if risk_level is not None:
            where.append("risk_level = ?")
            params.append(risk_level)
        if after is not None:
            where.append("(updated_at, study_uid) < (?, ?)")  # a row value: one index range
            params += [after[0], after[1]]
        sql = "SELECT * FROM studies" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY updated_at DESC, study_uid DESC LIMIT ?"
        return [dict(r) for r in self.read(sql, (*params, int(limit)))]

    def calling_aes(self, limit: int = 200) -> list[str]:
        """The calling AE titles seen (the console's filter choices): a loose index scan of studies_ae_recent,
        one index seek per title instead of a pass over every study."""
        return [r[0] for r in self.read(
            "WITH RECURSIVE aes(ae) AS (SELECT MIN(calling_ae) FROM studies UNION ALL"
            " SELECT (SELECT MIN(calling_ae) FROM studies WHERE calling_ae > aes.ae) FROM aes WHERE aes.ae IS NOT NULL)"
            " SELECT ae FROM aes WHERE ae IS NOT NULL LIMIT ?", (limit,))]

    def latest_errors(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest failures (failed studies and retries) with their error_text: never patient data."""
        rows = self.read("SELECT study_uid, ts, event, detail FROM events WHERE event IN"
                         " ('dead letter', 'retry', 'send failed', 'notification failed') ORDER BY id DESC LIMIT ?",
                         (limit,))
        return [{"study_uid": r["study_uid"], "ts": r["ts"], "event": r["event"], **json.loads(r["detail"])}
                for r in rows]

    def put_result(self, study_uid: str, summary: dict[str, Any], scanner_model: str | None = None) -> None:
        """Keep a study's result summary (numbers, warnings, model versions, objects: the worker's summary.json,
        which holds no patient data) for the console, whatever the destinations."""
        with self.transaction() as c:
            c.execute("INSERT INTO results(study_uid, ts, scanner_model, summary) VALUES (?, ?, ?, ?)"
                      " ON CONFLICT(study_uid) DO UPDATE SET ts = excluded.ts, scanner_model ="
                      " COALESCE(excluded.scanner_model, scanner_model), summary = excluded.summary",
                      (study_uid, time.time(), scanner_model, json.dumps(summary, default=str, sort_keys=True)))

    def result(self, study_uid: str) -> dict[str, Any] | None:
        rows = self.read("SELECT ts, scanner_model, summary FROM results WHERE study_uid = ?", (study_uid,))
        if not rows:
            return None
        return {"ts": rows[0]["ts"], "scanner_model": rows[0]["scanner_model"],
                "summary": json.loads(rows[0]["summary"])}

    def action(self, study_uid: str, action: str, user: str, role: str, **detail: Any) -> None:
        """An operator's action in the study's trail, with who did it."""
        self.event(study_uid, f"console: {action}", by=user, role=role, **detail)

    def force_complete(self, study_uid: str, user: str, role: str) -> bool:
        """Make a study still waiting for its completion timers complete at the listener's next pass (its
        pending row marked as being queued, which the completion loop handles at once). False when the
        study is not waiting."""
        with self.transaction() as c:
            try:
                changed = c.execute("UPDATE pending_studies SET state = 'enqueuing', retry_at = 0"
                                    " WHERE study_uid = ?", (study_uid,)).rowcount
            except sqlite3.OperationalError:  # no listener ever ran on this database
                return False
            if changed:
                self.add_event(c, study_uid, "console: force completion", {"by": user, "role": role})
            return bool(changed)

    def discard(self, study_uid: str, user: str, role: str) -> bool:
        """Stop a study for good: forget its pending completion and mark it ignored, in one transaction.
        A study being processed right now is refused (it would be written back); the caller removes the
        files. A new instance of the study later opens it again, like any finished study."""
        with self.transaction() as c:
            row = c.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if row is None or row["state"] in (PROCESSING, IGNORED):
                return False
            for table in ("pending_studies", "pending_series", "received_instances"):
                try:
                    c.execute(f"DELETE FROM {table} WHERE study_uid = ?", (study_uid,))
                except sqlite3.OperationalError:  # no listener ever ran on this database
                    pass
            self.put_state(c, study_uid, IGNORED, {"error": "discarded", "next_at": 0.0})
            self.add_event(c, study_uid, "console: discard", {"by": user, "role": role, "from": row["state"]})
            return True

    def add_feedback(self, study_uid: str, user: str, agree: bool | None, tirads: int | None = None,
                     size_mm: float | None = None, outline: list[list[float]] | None = None,
                     source: str = "form") -> int:
        """A radiologist's answer to a result: agree or not, their own TI-RADS and size, a corrected nodule
        outline (polygon of (row, column) in the key image's source frame). Returns its id."""
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO feedback(study_uid, ts, user, agree, tirads, size_mm, outline, source)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (study_uid, time.time(), user, None if agree is None else int(bool(agree)), tirads, size_mm,
                 json.dumps(outline) if outline else None, source))
            self.add_event(c, study_uid, "feedback", {"by": user, "agree": agree, "tirads": tirads,
                                                      "size_mm": size_mm, "outline": bool(outline),
                                                      "source": source})
            return int(cur.lastrowid or 0)

    def feedback(self, study_uid: str) -> list[dict[str, Any]]:
        rows = self.read("SELECT * FROM feedback WHERE study_uid = ? ORDER BY id", (study_uid,))
        out = []
        for r in rows:
            item = dict(r)
            item["outline"] = json.loads(item["outline"]) if item["outline"] else None
            out.append(item)
        return out

    def set_outcome(self, study_uid: str, user: str, llnm: bool, metastatic_nodes: int | None = None,
                    largest_node_mm: float | None = None) -> None:
        """The pathology outcome of a study (LLNM yes/no, number of metastatic lateral nodes, the largest
        one's size in mm: the paper's stage needs both); a later answer replaces an earlier one, both stay
        in the trail."""
        with self.transaction() as c:
            c.execute("INSERT INTO outcomes(study_uid, ts, user, llnm, metastatic_nodes, largest_node_mm)"
                      " VALUES (?, ?, ?, ?, ?, ?)"
                      " ON CONFLICT(study_uid) DO UPDATE SET ts = excluded.ts, user = excluded.user,"
                      " llnm = excluded.llnm, metastatic_nodes = excluded.metastatic_nodes,"
                      " largest_node_mm = excluded.largest_node_mm",
                      (study_uid, time.time(), user, int(bool(llnm)), metastatic_nodes, largest_node_mm))
            self.add_event(c, study_uid, "outcome", {"by": user, "llnm": bool(llnm),
                                                     "metastatic_nodes": metastatic_nodes,
                                                     "largest_node_mm": largest_node_mm})

    def outcome(self, study_uid: str) -> dict[str, Any] | None:
        rows = self.read("SELECT * FROM outcomes WHERE study_uid = ?", (study_uid,))
        return dict(rows[0]) if rows else None

    def outcomes(self) -> list[dict[str, Any]]:
        """Every outcome with the prediction it judges and the scanner model: what the metrics and
        `llnm cohort export` read."""
        rows = self.read("SELECT o.study_uid, o.ts, o.llnm, o.metastatic_nodes, o.largest_node_mm,"
                         " s.probability, s.risk_level,"
                         " r.scanner_model FROM outcomes o LEFT JOIN studies s USING (study_uid)"
                         " LEFT JOIN results r USING (study_uid) ORDER BY o.ts")
        return [dict(r) for r in rows]

    def agreements(self) -> list[dict[str, Any]]:
        """Each study's latest agree/disagree with its time and scanner model."""
        rows = self.read("SELECT f.study_uid, f.ts, f.agree, r.scanner_model FROM feedback f"
                         " LEFT JOIN results r USING (study_uid) WHERE f.agree IS NOT NULL AND f.id ="
                         " (SELECT MAX(id) FROM feedback g WHERE g.study_uid = f.study_uid AND g.agree IS NOT NULL)"
                         " ORDER BY f.ts")
        return [dict(r) for r in rows]

    def last_sent(self, scan: int = 2000) -> dict[str, float]:
        """Per destination, when it last stored a result (from the newest `scan` "sent" events)."""
        rows = self.read("SELECT ts, detail FROM events WHERE event = 'sent' ORDER BY id DESC LIMIT ?", (scan,))
        out: dict[str, float] = {}
        for r in rows:
            out.setdefault(json.loads(r["detail"]).get("destination", "?"), r["ts"])
        return out
