"""Spool and outbox retention, and the worker's gauges.

A study's spooled instances and outbox entries are removed once the study is `done` or `ignored` and
nothing of it changed for `LLNM_RETENTION_HOURS`. Failed studies (dead letter) keep their instances so
`llnm requeue` can run them again; studies still in flight are never touched. Spool folders the audit
trail does not know (e.g. only our own results that came back) go after the same age.
"""

from __future__ import annotations

import threading
import time

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.observability import metrics
from llnm.observability.logs import get_logger
from llnm.storage.outbox import Outbox
from llnm.storage.spool import Spool

log = get_logger(__name__)

INTERVAL_S = 60.0


def apply_retention(settings: Settings, audit: AuditTrail, now: float | None = None) -> list[str]:
    """Remove what retention allows; returns the study UIDs whose files were removed."""
    now = time.time() if now is None else now
    max_age = settings.retention_hours * 3600.0
    spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
    outbox = Outbox(settings.outbox_dir)

    def expired(uid: str) -> tuple[bool, dict | None]:
        row = audit.study(uid)
        if row is not None and row["state"] not in (A.DONE, A.IGNORED):
            return False, row
        newest = max(spool.last_modified(uid), outbox.last_modified(uid), row["updated_at"] if row else 0.0)
        return now - newest >= max_age, row

    removed = []
    for uid in sorted(set(spool.studies()) | set(outbox.studies())):
        if not expired(uid)[0]:
            continue
        with spool.removing():  # again under the lock: an instance stored meanwhile has reopened the study
            gone, row = expired(uid)
            if gone:
                spool.remove_study(uid)
                outbox.remove_study(uid)
        if not gone:
            continue
        if row is not None:
            audit.event(uid, "files removed by retention", hours=settings.retention_hours)
        log.info("study files removed by retention", study_uid=uid)
        removed.append(uid)
    return removed


class Maintenance:
    """A background thread: retention and gauges every INTERVAL_S."""

    def __init__(self, settings: Settings, audit: AuditTrail, interval_s: float = INTERVAL_S) -> None:
        self.settings = settings
        self.audit = audit
        self.interval_s = interval_s
        self.spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
        self.outbox = Outbox(settings.outbox_dir)
        from llnm.worker.destinations import parse_destinations

        self.nodes = parse_destinations(settings.destinations)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llnm-maintenance", daemon=True)

    def refresh_gauges(self) -> None:
        metrics.OUTBOX_PENDING.set(self.outbox.pending_count(self.nodes) if self.nodes else 0)
        metrics.SPOOL_BYTES.set(self.spool.usage_bytes())
        metrics.SPOOL_FREE_BYTES.set(self.spool.free_bytes())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                apply_retention(self.settings, self.audit)
                self.refresh_gauges()
            except Exception:
                log.exception("maintenance pass failed")

    def start(self) -> "Maintenance":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
