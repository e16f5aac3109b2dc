"""The Celery tasks: thin wrappers over llnm.worker.process (the decisions live there).

Each task gets (study_uid, attempt) as JSON. A retry or a delayed delivery is a new message published
before this one is acknowledged, so a kill at any point leaves at least one message for the study. An
exception that escapes the step (the audit database locked or full while recording a failure, the
broker gone while publishing the next step) must not end the task as failed: Celery acknowledges a
failed task even with acks_late, and the study would stay queued, processing or sending with no message
left. `guarded` publishes the same step again instead, or hands the message back.
"""

from __future__ import annotations

import threading
from typing import Callable

from celery import Celery
from celery.exceptions import Reject

from llnm.config import Settings
from llnm.observability import metrics
from llnm.observability.logs import get_logger
from llnm.worker.celery_app import DELIVER_TASK, PROCESS_TASK, create_app
from llnm.worker.process import Next, StudyWorker, run_delivery, run_process

log = get_logger(__name__)

#: how long a step whose bookkeeping failed waits before it runs again
GUARD_RETRY_S = 60.0

_worker: StudyWorker | None = None
_lock = threading.Lock()


def study_worker(settings: Settings) -> StudyWorker:
    """One StudyWorker (and model backend) per worker process, made on first use."""
    global _worker
    with _lock:
        if _worker is None:
            from llnm.inference.backend import create_backend

            _worker = StudyWorker(settings, create_backend(settings))
        return _worker


def guarded(study_uid: str, run: Callable[[], Next], publish: Callable[[Next], None],
            again: Callable[[], None]) -> None:
    """Run one step and publish what follows it. If anything escapes, publish this same step again
    (`again`, after GUARD_RETRY_S); if even that cannot be published, raise Reject(requeue=True): the
    message goes back to the queue, or, with the broker unreachable, stays unacknowledged and the broker
    hands it out again after the visibility timeout."""
    try:
        publish(run())
    except Exception as exc:
        log.error("study step failed outside its own error handling; it runs again", study_uid=study_uid,
                  error=type(exc).__name__, seconds=GUARD_RETRY_S)
        try:
            again()
        except Exception:
            raise Reject(type(exc).__name__, requeue=True) from None


def register(app: Celery, settings: Settings) -> Celery:
    @app.task(bind=True, name=PROCESS_TASK)
    def process_study(self, study_uid: str, attempt: int = 1) -> None:  # noqa: ANN001
        def run() -> Next:
            with metrics.STUDIES_IN_PROGRESS.track_inprogress():
                return run_process(study_worker(settings), study_uid, self.request.id, attempt)

        def publish(step: Next) -> None:
            if step.action == "process":
                process_study.apply_async(args=[study_uid, step.attempt], countdown=step.delay_s)
            elif step.action == "deliver":
                deliver_study.apply_async(args=[study_uid, step.attempt], countdown=step.delay_s)

        guarded(study_uid, run, publish, lambda: process_study.apply_async(
            args=[study_uid, attempt], countdown=GUARD_RETRY_S, task_id=self.request.id))

    @app.task(bind=True, name=DELIVER_TASK)
    def deliver_study(self, study_uid: str, attempt: int = 1) -> None:  # noqa: ANN001
        def run() -> Next:
            with metrics.STUDIES_IN_PROGRESS.track_inprogress():
                return run_delivery(study_worker(settings), study_uid, attempt)

        def publish(step: Next) -> None:
            if step.action == "deliver":
                deliver_study.apply_async(args=[study_uid, step.attempt], countdown=step.delay_s)

        guarded(study_uid, run, publish, lambda: deliver_study.apply_async(
            args=[study_uid, attempt], countdown=GUARD_RETRY_S, task_id=self.request.id))

    return app


def make_app(settings: Settings) -> Celery:
    return register(create_app(settings), settings)
