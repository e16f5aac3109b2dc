"""Assembling the long-running services from Settings: `llnm listener`, `llnm worker` and the embedded
`llnm serve` (listener + in-process queue + worker threads + ONNX Runtime + results folder + the web
console on LLNM_CONSOLE_PORT, llnm.console).

Each process serves /metrics, /healthz and /readyz on LLNM_METRICS_PORT (0: no HTTP endpoint) and stops
cleanly on SIGTERM/SIGINT: the listener stops accepting, the worker finishes the study in hand.

Readiness holds only what the process itself needs to do its job: the listener's is its spool (on a
broker outage it still receives and spools, and queues the studies once Redis is back), the worker's
the spool too; broker and models are reported as advisory checks in /readyz (alerts watch them). On
Kubernetes the listener and its workers share one pod, and that pod must stay in the DICOM Service
through a Redis or Triton blip.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import TYPE_CHECKING, Callable

from llnm import RESEARCH_USE_STATEMENT
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL, create_backend
from llnm.observability.health import HealthServer, broker_check, disk_check, models_check, writable_dir_check
from llnm.observability.logs import get_logger

if TYPE_CHECKING:
    from llnm.console.server import ConsoleServer

log = get_logger(__name__)

MODELS = (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("stopping on signal", reason=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _health(settings: Settings, checks: dict, on_scrape=None, advisory: dict | None = None,
            heartbeats: dict | None = None) -> HealthServer | None:
    if not settings.metrics_port:
        return None
    return HealthServer(settings.metrics_port, checks, host=settings.bind_address, on_scrape=on_scrape,
                        advisory=advisory, heartbeats=heartbeats).start()


def warn_about_settings(settings: Settings, receives: bool) -> list[str]:
    """Loud warnings at start about configuration that works but is probably not meant: `LLNM_*`
    variables no setting reads (misspelt: their default is used), and, for a process that receives
    DICOM, an empty calling-AE allow-list (any host that reaches the port may store studies)."""
    warnings = []
    for name in Settings.unknown_variables():
        log.warning("unknown setting ignored: no LLNM_* setting has this name (misspelt?)", variable=name)
        warnings.append(name)
    if receives and not settings.allowed_aes.strip():
        log.warning("LLNM_ALLOWED_AES is empty: ANY calling AE that reaches the DICOM port may store studies; "
                    "set the allow-list (AE titles, optionally @IP) of the PACS and modalities that send here",
                    variable="LLNM_ALLOWED_AES")
        warnings.append("LLNM_ALLOWED_AES")
    return warnings


def console_checks(settings: Settings, backend: object | None = None, heartbeats: dict | None = None,
                   worker_threads: list[threading.Thread] | None = None) -> dict:
    """The live checks the console's health page shows: workers, models (Triton), broker, disk, and the
    listener's loops when it runs in this process."""
    checks = {"spool disk": disk_check(settings.data_dir, settings.min_free_disk_mb)}
    if settings.broker_url:
        checks["broker"] = broker_check(settings.broker_url)
        checks["workers"] = _celery_workers_check(settings)
    if worker_threads is not None:
        def threads_alive() -> tuple[bool, str]:
            alive = sum(t.is_alive() for t in worker_threads)
            return alive == len(worker_threads) > 0, f"{alive} of {len(worker_threads)} threads alive"

        checks["workers"] = threads_alive
    if backend is not None:
        checks["models" if settings.inference_backend != "triton" else "Triton"] = models_check(backend, MODELS)
    elif settings.inference_backend == "triton":
        checks["Triton"] = _lazy_models_check(settings)
    for name, beat in (heartbeats or {}).items():
        checks[f"listener {name}"] = lambda beat=beat: (beat.alive(), f"{beat.age():.0f} s since the last pass")
    return checks


def _celery_workers_check(settings: Settings) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        from llnm.worker.celery_app import create_app

        replies = create_app(settings).control.ping(timeout=1.0) or []
        return bool(replies), f"{len(replies)} answering"

    return check


def _lazy_models_check(settings: Settings) -> Callable[[], tuple[bool, str]]:
    backends: list = []

    def check() -> tuple[bool, str]:
        if not backends:
            backends.append(create_backend(settings))
        return models_check(backends[0], MODELS)()

    return check


def _start_console(settings: Settings, audit: AuditTrail, checks: dict) -> "ConsoleServer | None":
    """The web console inside `llnm serve` (LLNM_CONSOLE_PORT, 0: off); a port in use or a refused console
    setting (a short secret key, a wrong single sign-on setting) is logged, never fatal."""
    if not settings.console_port:
        return None

    from llnm.console.auth import SecretKeyError
    from llnm.console.oidc import OidcConfigError
    from llnm.console.server import ConsoleServer

    try:
        return ConsoleServer(settings, audit, checks).start()
    except OSError:
        log.error("console not started: its port is in use or not allowed", port=settings.console_port,
                  variable="LLNM_CONSOLE_PORT")
    except (SecretKeyError, OidcConfigError) as exc:  # fixed texts naming the setting, never a secret
        log.error("console not started: a console setting is refused", error=str(exc))
    return None


def run_listener(settings: Settings) -> int:
    """The DICOM listener feeding the Celery queue."""
    from llnm.listener.app import Listener
    from llnm.observability import metrics
    from llnm.worker.celery_app import CeleryQueue, queue_depth

    if not settings.broker_url:
        log.error("LLNM_BROKER_URL is not set: `llnm listener` feeds Celery; use `llnm serve` without Redis")
        return 2
    warn_about_settings(settings, receives=True)
    queue = CeleryQueue(settings)
    listener = Listener(settings, queue.enqueue)

    def scrape() -> None:
        listener.refresh_gauges()
        metrics.QUEUE_DEPTH.set(queue_depth(settings))

    checks = {"spool writable": writable_dir_check(settings.spool_dir),
              "spool disk": disk_check(settings.data_dir, settings.min_free_disk_mb)}
    advisory = {"broker": broker_check(settings.broker_url)}  # a Redis blip: still receiving, still ready
    stop = _stop_on_signals()
    health = _health(settings, checks, scrape, advisory, listener.heartbeats)
    listener.start()
    log.info(RESEARCH_USE_STATEMENT)
    stop.wait()
    listener.stop()
    if health:
        health.stop()
    return 0


def run_worker(settings: Settings) -> int:
    """The Celery worker (thread pool: one process, so its metrics are one registry)."""
    from llnm.observability import metrics
    from llnm.worker.celery_app import queue_depth
    from llnm.worker.maintenance import Maintenance
    from llnm.worker.tasks import make_app, study_worker

    if not settings.broker_url:
        log.error("LLNM_BROKER_URL is not set: `llnm worker` consumes Celery; use `llnm serve` without Redis")
        return 2
    warn_about_settings(settings, receives=False)
    app = make_app(settings)
    worker = study_worker(settings)
    maintenance = Maintenance(settings, worker.audit)

    def scrape() -> None:
        maintenance.refresh_gauges()
        metrics.QUEUE_DEPTH.set(queue_depth(settings))

    checks = {"spool writable": writable_dir_check(settings.spool_dir)}
    advisory = {"broker": broker_check(settings.broker_url),  # the listener's pod must not leave its
                "models": models_check(worker.backend, MODELS)}  # Service over Redis or Triton
    health = _health(settings, checks, scrape, advisory)
    metrics.WORKER_SLOTS.set(max(1, settings.worker_concurrency))
    maintenance.start()
    log.info(RESEARCH_USE_STATEMENT)
    from celery.signals import setup_logging

    setup_logging.connect(_keep_our_logging, weak=False)  # our JSON logs stay as configured
    celery_worker = app.Worker(
        # the metrics port tells apart the worker processes of one pod (they share its host name)
        hostname=f"llnm-{settings.metrics_port}@{socket.gethostname()}", pool_cls="threads",
        concurrency=max(1, settings.worker_concurrency), queues=[settings.queue_name], loglevel=settings.log_level,
        quiet=True, redirect_stdouts=False, without_gossip=True, without_mingle=True, without_heartbeat=True)
    try:
        celery_worker.start()
    finally:
        maintenance.stop()
        if health:
            health.stop()
    return int(celery_worker.exitcode or 0)


def _keep_our_logging(**kwargs: object) -> None:
    """A setup_logging receiver: Celery then leaves logging as configure_logging set it."""


def run_embedded(settings: Settings) -> int:
    """`llnm serve`: everything in one process, nothing else to install or configure."""
    from llnm.listener.app import Listener
    from llnm.worker.local import LocalQueue
    from llnm.worker.maintenance import Maintenance
    from llnm.worker.process import StudyWorker

    warn_about_settings(settings, receives=True)
    audit = AuditTrail.for_data_dir(settings.data_dir)
    backend = create_backend(settings)
    try:
        missing = [m for m in MODELS if not backend.has_model(m)]
    except ConnectionError:  # Triton not reachable yet: /readyz says so; studies retry until it is
        log.warning("inference server not reachable at start", url=settings.triton_url)
        missing = []
    if missing:
        log.warning("models missing: studies will fail until they are installed (then `llnm requeue`)",
                    model=",".join(missing), path=str(settings.model_repository))
    worker = StudyWorker(settings, backend, audit)
    queue = LocalQueue(worker, threads=settings.worker_concurrency)
    listener = Listener(settings, queue.enqueue, audit=audit)
    maintenance = Maintenance(settings, audit)

    def scrape() -> None:
        listener.refresh_gauges()
        maintenance.refresh_gauges()
        queue.refresh_gauges()

    checks = {"spool writable": writable_dir_check(settings.spool_dir),
              "spool disk": disk_check(settings.data_dir, settings.min_free_disk_mb),
              "models": models_check(backend, MODELS)}
    stop = _stop_on_signals()
    health = _health(settings, checks, scrape, heartbeats=listener.heartbeats)
    queue.start()
    maintenance.start()
    listener.start()
    console = _start_console(settings, audit, console_checks(settings, backend, listener.heartbeats,
                                                             queue.worker_threads()))
    log.info(RESEARCH_USE_STATEMENT)
    log.info("ready: send studies to the listener", called_ae=settings.ae_title, port=listener.port,
             path=str(worker.settings.results_path) if worker.write_results_folder else None,
             destination=settings.destinations or None, console_port=console.port if console else None)
    stop.wait()
    if console:
        console.stop()
    listener.stop()
    queue.stop()
    maintenance.stop()
    if health:
        health.stop()
    return 0
