"""Prometheus metrics of the listener and the worker. Labels carry AE titles, destinations, stages,
model names and outcomes only: never a UID, a name, an ID or a date.

Every metric lives in this module so names stay consistent across services and dashboards; a service
exposes them with `llnm.observability.health.HealthServer` on `LLNM_METRICS_PORT`.
Pipeline code times its stages with `with stage("segmentation"): ...`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL
from llnm.quality import CODES as QUALITY_CODES

disable_created_metrics()  # no *_created series: half the output, nothing a dashboard uses

REGISTRY = CollectorRegistry(auto_describe=True)

#: The per-stage latency histogram's stages, in pipeline order.
STAGES = ("decode", "segmentation", "features", "text", "tmdl", "dicom_write", "send", "pipeline")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# -- listener ------------------------------------------------------------------------------------------
ASSOCIATIONS = Counter("llnm_associations", "Association requests, by calling AE and result "
                       "(accepted, rejected)", ["calling_ae", "result"], registry=REGISTRY)
#: why a connection was closed before or at association negotiation (llnm.listener.pynetdicom_adapter.accept, Listener):
#: these label values only, never a peer's address or AE title
REFUSAL_REASONS = ("no_association_request", "pre_association_limit", "tls_handshake_failed",
                   "tls_handshake_timeout", "calling_ae_not_allowed", "called_ae_not_recognised",
                   "association_limit", "rejected_other")
CONNECTIONS_REFUSED = Counter("llnm_connections_refused", "Connections and association requests the listener "
                              "refused, by reason", ["reason"], registry=REGISTRY)
INSTANCES = Counter("llnm_instances_received", "C-STORE requests, by calling AE and status "
                    "(stored, duplicate, out_of_resources, invalid, error)", ["calling_ae", "status"],
                    registry=REGISTRY)
BAD_CONNECTIONS = Counter("llnm_bad_connections", "Connections closed or associations aborted because of "
                          "what the peer sent, by reason (llnm.listener.guard.REASONS); each one, where the "
                          "log lines are rate-limited", ["reason"], registry=REGISTRY)
RECEIVED_BYTES = Counter("llnm_received_bytes", "Bytes of instances written to the spool", ["calling_ae"],
                         registry=REGISTRY)
STUDIES_WAITING = Gauge("llnm_studies_waiting", "Studies receiving instances, waiting for completion",
                        registry=REGISTRY)
STUDIES_COMPLETED = Counter("llnm_studies_completed", "Completed studies, by outcome (queued, ignored)",
                            ["outcome"], registry=REGISTRY)
ENQUEUE_ERRORS = Counter("llnm_enqueue_errors", "Failures to put a completed study on the queue",
                         registry=REGISTRY)
SPOOL_BYTES = Gauge("llnm_spool_bytes", "Bytes of instances in the spool", registry=REGISTRY)
SPOOL_FREE_BYTES = Gauge("llnm_spool_free_bytes", "Free bytes on the spool's file system", registry=REGISTRY)
OWN_OUTPUT = Counter("llnm_own_output_received", "Instances this worker produced, received back and ignored",
                     registry=REGISTRY)

# -- queue and worker ----------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge("llnm_queue_depth", "Studies waiting on the work queue", registry=REGISTRY)
#: with QUEUE_DEPTH, the workers' load: (queued + in progress) / slots; above 1 studies wait for a worker
STUDIES_IN_PROGRESS = Gauge("llnm_studies_in_progress", "Tasks (processing or delivering a study) this worker "
                            "runs now", registry=REGISTRY)
WORKER_SLOTS = Gauge("llnm_worker_slots", "Tasks this worker can run at once (LLNM_WORKER_CONCURRENCY)",
                     registry=REGISTRY)
STUDIES_PROCESSED = Counter("llnm_studies_processed", "Studies processed and results delivered",
                            registry=REGISTRY)
STUDIES_FAILED = Counter("llnm_studies_failed", "Failed processing attempts, by kind (transient, permanent)",
                         ["kind"], registry=REGISTRY)
STUDIES_DEAD_LETTERED = Counter("llnm_studies_dead_lettered", "Studies that failed for good (dead letter)",
                                registry=REGISTRY)
STAGE_SECONDS = Histogram("llnm_stage_seconds", "Latency of each processing stage", ["stage"],
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TRITON_SECONDS = Histogram("llnm_triton_request_seconds", "Triton inference request latency", ["model"],
                           buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TRITON_ERRORS = Counter("llnm_triton_errors", "Failed Triton inference requests", ["model"], registry=REGISTRY)
MODEL_SECONDS = Histogram("llnm_model_seconds", "Model inference latency (any backend)", ["model", "backend"],
                          buckets=_LATENCY_BUCKETS, registry=REGISTRY)
OUTBOX_PENDING = Gauge("llnm_outbox_pending", "Result objects in the outbox not yet delivered everywhere",
                       registry=REGISTRY)
OBJECTS_SENT = Counter("llnm_objects_sent", "Result objects stored at a destination, by outcome",
                       ["destination", "outcome"], registry=REGISTRY)
#: the quality gate (llnm.quality): label values are its reason codes only (QUALITY_CODES), a bounded set
STUDIES_NOT_ASSESSABLE = Counter("llnm_studies_not_assessable", "Studies processed with no view passing the "
                                 "quality gate (result 'not assessable'), by main reason", ["reason"],
                                 registry=REGISTRY)
VIEWS_DECLINED = Counter("llnm_views_declined", "Views of processed studies the quality gate declined, by main "
                         "reason (a good image merely showing no nodule is not declined)", ["reason"],
                         registry=REGISTRY)
#: 1 for the backend this worker runs its models on: the alert on a missing Triton needs to know that
#: workers want one (a CPU-only site has no Triton target, and that is fine)
INFERENCE_BACKEND = Gauge("llnm_inference_backend_info", "1 for the inference backend this worker uses "
                          "(onnxruntime or triton)", ["backend"], registry=REGISTRY)
TRITON_MODEL_MISMATCHES = Counter("llnm_triton_model_mismatches", "Models Triton serves whose declared sha256 "
                                  "(config.pbtxt parameter llnm_sha256) is missing or differs from the worker's; "
                                  "the worker refused to use them", ["model"], registry=REGISTRY)

# -- label values known before the first event ------------------------------------------------------------
# A labelled series exists only once it has been touched. An alert on `increase()` of a series that is born
# at 1 never sees that first event, and `sum()` over no series is no result at all (an `== 0` never holds),
# so every label value known up front starts at 0 (below, and per site in init_listener_series /
# init_worker_series).
FAILURE_KINDS = ("transient", "permanent")
COMPLETION_OUTCOMES = ("queued", "ignored")
ASSOCIATION_RESULTS = ("accepted", "rejected")
INSTANCE_STATUSES = ("stored", "duplicate", "out_of_resources", "invalid", "error")
SEND_OUTCOMES = ("stored", "failed")
TRITON_MODELS = (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one pipeline stage into llnm_stage_seconds{stage=name}."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage=name).observe(time.perf_counter() - start)


for _s in STAGES:  # every stage series exists from the start, so dashboards show zeros, not gaps
    STAGE_SECONDS.labels(stage=_s)
for _reason in REFUSAL_REASONS:
    CONNECTIONS_REFUSED.labels(reason=_reason)
for _code in QUALITY_CODES:
    STUDIES_NOT_ASSESSABLE.labels(reason=_code)
    VIEWS_DECLINED.labels(reason=_code)
for _kind in FAILURE_KINDS:
    STUDIES_FAILED.labels(kind=_kind)
for _outcome in COMPLETION_OUTCOMES:
    STUDIES_COMPLETED.labels(outcome=_outcome)
for _model in TRITON_MODELS:
    TRITON_ERRORS.labels(model=_model)
    TRITON_MODEL_MISMATCHES.labels(model=_model)


def init_listener_series(calling_aes: Iterable[str]) -> None:
    """Start the per-calling-AE series at 0 (the allow-list's titles and "other"), so the first rejected
    association or refused instance of a sender already counts in `increase()`."""
    for title in calling_aes:
        for result in ASSOCIATION_RESULTS:
            ASSOCIATIONS.labels(calling_ae=title, result=result)
        for status in INSTANCE_STATUSES:
            INSTANCES.labels(calling_ae=title, status=status)


def init_worker_series(destinations: Iterable[str], backend: str) -> None:
    """Start the per-destination send series at 0 (the first failed C-STORE counts) and say which inference
    backend this worker uses (llnm_inference_backend_info)."""
    for label in destinations:
        for outcome in SEND_OUTCOMES:
            OBJECTS_SENT.labels(destination=label, outcome=outcome)
    for name in ("onnxruntime", "triton"):
        INFERENCE_BACKEND.labels(backend=name).set(1 if name == backend else 0)
