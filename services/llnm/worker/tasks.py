"""The Celery tasks: thin wrappers over llnm.worker.process (the decisions live there).

Each task gets (study_uid, attempt) as JSON. A retry or a delayed delivery is a new message published
before this one is acknowledged, so a kill at any point leaves at least one message for the study.
"""

from __future__ import annotations

import threading

from celery import Celery

from llnm.config import Settings
from llnm.observability import metrics
from llnm.worker.celery_app import DELIVER_TASK, PROCESS_TASK, create_app
from llnm.worker.process import StudyWorker, run_delivery, run_process

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


def register(app: Celery, settings: Settings) -> Celery:
    @app.task(bind=True, name=PROCESS_TASK)
    def process_study(self, study_uid: str, attempt: int = 1) -> None:  # noqa: ANN001
        with metrics.STUDIES_IN_PROGRESS.track_inprogress():
            step = run_process(study_worker(settings), study_uid, self.request.id, attempt)
        if step.action == "process":
            process_study.apply_async(args=[study_uid, step.attempt], countdown=step.delay_s)
        elif step.action == "deliver":
            deliver_study.apply_async(args=[study_uid, step.attempt], countdown=step.delay_s)

    @app.task(bind=True, name=DELIVER_TASK)
    def deliver_study(self, study_uid: str, attempt: int = 1) -> None:  # noqa: ANN001
        with metrics.STUDIES_IN_PROGRESS.track_inprogress():
            step = run_delivery(study_worker(settings), study_uid, attempt)
        if step.action == "deliver":
            deliver_study.apply_async(args=[study_uid, step.attempt], countdown=step.delay_s)

    return app


def make_app(settings: Settings) -> Celery:
    return register(create_app(settings), settings)
