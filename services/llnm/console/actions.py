"""The operators' actions. Each is recorded in the study's audit trail with who did it (and, where the
action refuses, why), and none takes a patient datum: only the Study Instance UID.

- requeue: a failed (or finished) study runs again from its spooled instances (llnm.worker.requeue).
- re-send: a destination's "stored" markers are forgotten and the study delivered again from the outbox
  (same SOP Instance UIDs: a PACS that has them stores them once).
- force completion: a study still waiting for its completion timers is queued at the listener's next pass.
- discard: the study is stopped (state ignored) and its spooled instances and outbox removed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.console.auth import User
from llnm.observability.logs import get_logger
from llnm.storage.outbox import Outbox, destination_key
from llnm.storage.spool import Spool
from llnm.worker.destinations import parse_destinations

log = get_logger(__name__)


@dataclass
class Outcome:
    ok: bool
    message: str


def requeue(settings: Settings, audit: AuditTrail, study_uid: str, user: User) -> Outcome:
    from llnm.worker.requeue import requeue as requeue_studies

    queued, errors = requeue_studies(settings, [study_uid], audit=audit)
    ok = study_uid in queued
    message = "queued again" if ok else errors.get(study_uid, "not queued")
    audit.action(study_uid, "requeue", user.name, user.role, ok=ok, **({} if ok else {"reason": message}))
    log.info("console action", action="requeue", study_uid=study_uid, user=user.name, ok=ok)
    return Outcome(ok, message)


def resend(settings: Settings, audit: AuditTrail, study_uid: str, destination: str, user: User) -> Outcome:
    nodes = {n.label: n for n in parse_destinations(settings.destinations)}
    node = nodes.get(destination)
    row = audit.study(study_uid)
    outbox = Outbox(settings.outbox_dir)
    if node is None:
        outcome = Outcome(False, "not a configured destination")
    elif row is None or row["state"] not in (A.DONE, A.FAILED, A.SENDING):
        outcome = Outcome(False, "only a done, failed or sending study can be sent again")
    elif not outbox.objects(study_uid):
        outcome = Outcome(False, "its results are no longer in the outbox (retention): requeue the study")
    else:
        shutil.rmtree(outbox.study_dir(study_uid) / ".sent" / destination_key(node), ignore_errors=True)
        moved = audit.transition(study_uid, (A.DONE, A.FAILED, A.SENDING), A.SENDING, send_attempts=0,
                                 next_at=0.0, error=None)
        if moved and settings.broker_url:
            from llnm.worker.celery_app import DELIVER_TASK, create_app

            create_app(settings).send_task(DELIVER_TASK, args=[study_uid, 1], queue=settings.queue_name)
        outcome = Outcome(moved, "delivery queued" if moved else "the study changed state meanwhile")
    audit.action(study_uid, "re-send", user.name, user.role, destination=destination, ok=outcome.ok,
                 **({} if outcome.ok else {"reason": outcome.message}))
    log.info("console action", action="re-send", study_uid=study_uid, user=user.name, destination=destination,
             ok=outcome.ok)
    return outcome


def force_complete(audit: AuditTrail, study_uid: str, user: User) -> Outcome:
    ok = audit.force_complete(study_uid, user.name, user.role)
    if not ok:
        audit.action(study_uid, "force completion", user.name, user.role, ok=False,
                     reason="not waiting for completion")
    log.info("console action", action="force completion", study_uid=study_uid, user=user.name, ok=ok)
    return Outcome(ok, "completes at the listener's next pass" if ok else "the study is not waiting")


def discard(settings: Settings, audit: AuditTrail, study_uid: str, user: User) -> Outcome:
    ok = audit.discard(study_uid, user.name, user.role)
    if ok:
        Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy).remove_study(study_uid)
        Outbox(settings.outbox_dir).remove_study(study_uid)
    else:
        audit.action(study_uid, "discard", user.name, user.role, ok=False,
                     reason="unknown, already ignored, or being processed")
    log.info("console action", action="discard", study_uid=study_uid, user=user.name, ok=ok)
    return Outcome(ok, "discarded" if ok else "cannot discard a study being processed or already ignored")
