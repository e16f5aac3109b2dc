"""Putting studies back on the queue (`llnm requeue`): the dead letter's way out.

The study runs from the start (its spooled instances must still be there); outputs already delivered
are not sent again (see llnm.storage.outbox).
"""

from __future__ import annotations

import time

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.storage.names import InvalidUID, validate_uid
from llnm.storage.spool import Spool


def running(audit: AuditTrail, study_uid: str, now: float | None = None) -> bool:
    """Does a run of the study hold it now (its lease, `AuditTrail.claim_run`)? A study left processing
    without one was stranded (its worker gone, its message lost) and may be queued again."""
    owner, until = audit.run_lease(study_uid)
    return owner is not None and until > (time.time() if now is None else now)


def requeue(settings: Settings, study_uids: list[str], all_failed: bool = False,
            audit: AuditTrail | None = None) -> tuple[list[str], dict[str, str]]:
    """Queue the studies again; returns (queued UIDs, {UID: why not})."""
    audit = audit or AuditTrail.for_data_dir(settings.data_dir)
    spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
    uids = list(study_uids)
    if all_failed:
        uids += [r["study_uid"] for r in audit.studies((A.FAILED,), limit=1_000_000)]
    queue = None
    if settings.broker_url:
        from llnm.worker.celery_app import CeleryQueue

        queue = CeleryQueue(settings)
    queued: list[str] = []
    errors: dict[str, str] = {}
    for raw in dict.fromkeys(uids):
        try:
            uid = validate_uid(raw)
        except InvalidUID as exc:
            errors[str(raw)] = str(exc)
            continue
        row = audit.study(uid)
        if row is not None and (row["state"] == A.RECEIVING or (row["state"] == A.PROCESSING and running(audit, uid))):
            errors[uid] = f"study is {row['state']}; it will be processed without a requeue"
            continue
        if not spool.instances(uid):
            errors[uid] = "no spooled instances (never received, or removed by retention): send it again"
            continue
        previous = row["state"] if row is not None else A.FAILED
        audit.set_state(uid, A.QUEUED, event="requeued", attempts=0, send_attempts=0, next_at=0.0, error=None)
        if queue is not None:
            try:
                task_id = queue.enqueue(uid)
            except Exception as exc:  # broker down: leave the study as it was, say why
                audit.set_state(uid, previous, event="requeue failed", detail={"error": type(exc).__name__})
                errors[uid] = f"could not queue it: {type(exc).__name__} (is the broker up?)"
                continue
            audit.event(uid, "queued", task_id=task_id)
        queued.append(uid)
    return queued, errors
