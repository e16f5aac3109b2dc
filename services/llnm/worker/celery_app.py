"""The Celery application: Redis broker, JSON only, at-least-once delivery of each task.

- task_acks_late + task_reject_on_worker_lost: a task is acknowledged after it ran; a worker killed
  mid-study leaves it unacknowledged, and Redis hands it out again after the visibility timeout
  (LLNM_BROKER_VISIBILITY_TIMEOUT_S; keep it above the longest study's processing time). `llnm worker`
  runs Celery's thread pool (one process, one metrics registry), so a kill takes the whole worker and
  the visibility timeout is what brings the study back; with a prefork pool, a lost child's task is
  rejected back to the queue at once.
- worker_prefetch_multiplier 1: a worker holds one study at a time, so a kill strands at most that one.
- No result backend: the outcome of each study is in the audit trail.
"""

from __future__ import annotations

from celery import Celery

from llnm.config import Settings

PROCESS_TASK = "llnm.process_study"
DELIVER_TASK = "llnm.deliver_study"


def transport_options(settings: Settings) -> dict[str, object]:
    """Redis transport: the visibility timeout, and sweeps for abandoned tasks at a quarter of it (kombu's
    default sweeps only every 100 s, which would hold a killed worker's study that long)."""
    visibility = settings.broker_visibility_timeout_s
    options: dict[str, object] = {"visibility_timeout": visibility,
                                  "unacked_restore_interval": int(max(1, min(60, visibility // 4))),
                                  "unacked_restore_throttle": 1,
                                  # a broker that vanishes mid-call must not hang the listener's queueing
                                  "socket_timeout": 30, "socket_connect_timeout": 5}
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def create_app(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise ValueError("LLNM_BROKER_URL is empty: the Celery worker needs Redis (or run `llnm serve`)")
    app = Celery("llnm", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue_name,
        task_routes={PROCESS_TASK: {"queue": settings.queue_name}, DELIVER_TASK: {"queue": settings.queue_name}},
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app


def queue_key(settings: Settings) -> str:
    """The Redis list holding the queue's waiting tasks (for the queue depth metric)."""
    return f"{settings.broker_key_prefix}{settings.queue_name}"


def queue_depth(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return int(client.llen(queue_key(settings)))
    finally:
        client.close()


class CeleryQueue:
    """The listener's side: put one process_study task on the broker per completed study."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)

    def enqueue(self, study_uid: str) -> str | None:
        result = self.app.send_task(PROCESS_TASK, args=[study_uid, 1], queue=self.settings.queue_name,
                                    retry=True, retry_policy={"max_retries": 3, "interval_start": 0.5,
                                                              "interval_step": 1.0, "interval_max": 3.0})
        return result.id
