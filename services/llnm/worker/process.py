"""Processing one completed study, as plain functions the Celery tasks and the embedded queue both call.

`StudyWorker.process(uid)` runs the pipeline on the spooled instances and puts the result objects (SR, SEG,
key image) in the outbox and/or the local results folder; `StudyWorker.deliver(uid)` C-STOREs what is
pending in the outbox to every destination. Both are idempotent: the DICOM writer derives output UIDs from
the study, so running a study again (after a kill, a retry or a requeue) rewrites the same objects and
sends only what no destination has stored yet.

Faults are sorted into transient (worth a retry with backoff: network, Triton unavailable, disk busy) and
permanent (dead letter at once: a missing model, an unreadable study).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.dicom.supersede import ResultRecord, is_rejection_note, succeed_output
from llnm.inference.backend import (NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL, InferenceBackend,
                                    ModelMismatch, ModelNotFound)
from llnm.notify import WorkerHooks
from llnm.observability import metrics
from llnm.observability.logs import get_logger
from llnm.quality import CODES as QUALITY_CODES
from llnm.quality import NO_IMAGE, NO_IMAGE_TEXT, view_declined
from llnm.storage.outbox import Outbox
from llnm.storage.spool import Spool
from llnm.worker.destinations import Destination, Sender, parse_destinations

log = get_logger(__name__)

#: predict_paths(paths, backend, settings) -> list[StudyOutput] (llnm.predict); injectable for tests.
Predict = Callable[[list[Path], InferenceBackend, Settings], list[Any]]
#: write_output(output, out_dir) -> Path (llnm.predict).
WriteOutput = Callable[[Any, Path], Path]

BACKOFF_CAP_S = 600.0

#: A run that finds no image to analyse in a study whose earlier result was analysed (retention removed
#: the images, then a late report reopened it) must not replace that result with a "no image" notice and
#: a rejection note of it: the earlier result stands, and the study waits for its images.
NOTHING_LEFT_TO_ANALYSE = ("no image of this study is left to analyse (removed by retention?); the earlier "
                           "result stands: send the study's images again to analyse it with what arrived since")


class PermanentError(RuntimeError):
    """Retrying cannot help: the study goes to the dead letter. Its messages are fixed texts (no header
    value), so the audit trail keeps them."""

    audit_safe = True


class StudyBusy(RuntimeError):
    """Another run of this study is in progress (a second message for it, the listener having queued it
    again mid-run): run again after `retry_in_s`, when that run has ended or its lease expired."""

    audit_safe = True

    def __init__(self, retry_in_s: float) -> None:
        super().__init__("another run of this study is in progress")
        self.retry_in_s = retry_in_s


#: how soon a run that found its study busy looks again, and the most it waits for another run's lease
BUSY_RETRY_S = 5.0
BUSY_RETRY_MAX_S = 60.0


class DeliveryPending(RuntimeError):
    """Some result objects are not yet stored at some destination (retry the delivery later); the message
    names configured destinations only."""

    audit_safe = True


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (PermanentError, ModelNotFound)):
        return False
    if isinstance(exc, ModelMismatch):  # an old Triton pod may still answer during a rollout: retry
        return True
    return isinstance(exc, (OSError, TimeoutError, DeliveryPending, sqlite3.OperationalError))


def backoff_s(base_s: float, attempt: int, cap_s: float = BACKOFF_CAP_S) -> float:
    """Exponential backoff: base, 2*base, 4*base ... capped (attempt counts from 1)."""
    return float(min(cap_s, base_s * (2 ** max(0, attempt - 1))))


def result_key(summary: dict | None) -> str:
    """A hash of the result summary: equal for a re-run of the same study, different when the result
    changed (the outbox then sends the objects again)."""
    text = json.dumps(summary or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Processed:
    study_uid: str
    objects: int
    probability: float | None
    risk_level: int | None


#: The stage each model's inference belongs to (llnm_stage_seconds); decode and features are timed by
#: the pipeline code itself.
MODEL_STAGES = {NODULE_SEG: "segmentation", THYROID_SEG: "segmentation", TEXT_ENCODER: "text", TMDL: "tmdl"}


class TimedBackend:
    """Wraps a backend to time every model call (llnm_model_seconds and its stage), whatever the backend."""

    def __init__(self, inner: InferenceBackend, name: str) -> None:
        self.inner = inner
        self.name = name
        # the pipeline reads the tokenizer beside the text encoder in the backend's repository
        self.model_repository = getattr(inner, "model_repository", None)

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            return self.inner.infer(model, inputs)
        finally:
            elapsed = time.perf_counter() - start
            metrics.MODEL_SECONDS.labels(model=model, backend=self.name).observe(elapsed)
            if model in MODEL_STAGES:
                metrics.STAGE_SECONDS.labels(stage=MODEL_STAGES[model]).observe(elapsed)

    def has_model(self, model: str) -> bool:
        return self.inner.has_model(model)

    def model_version(self, model: str) -> str:
        return self.inner.model_version(model)


def _default_predict() -> tuple[Predict, WriteOutput]:
    from llnm.predict import predict_paths, write_output

    return predict_paths, write_output


class StudyWorker:
    def __init__(self, settings: Settings, backend: InferenceBackend, audit: AuditTrail | None = None,
                 predict: Predict | None = None, write_output: WriteOutput | None = None) -> None:
        self.settings = settings
        self.backend = TimedBackend(backend, settings.inference_backend)
        self.audit = audit or AuditTrail.for_data_dir(settings.data_dir)
        self.spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
        self.outbox = Outbox(settings.outbox_dir)
        self.nodes: list[Destination] = parse_destinations(settings.destinations)
        metrics.init_worker_series([n.label for n in self.nodes], settings.inference_backend)
        self.sender = Sender(settings)
        self.hooks = WorkerHooks(settings, self.audit)  # result kept for the console; webhooks
        if predict is None or write_output is None:
            default_predict, default_write = _default_predict()
            predict = predict or default_predict
            write_output = write_output or default_write
        self._predict = predict
        self._write_output = write_output

    @property
    def write_results_folder(self) -> bool:
        """Results go to the local folder when no PACS is configured, or when a folder is set explicitly."""
        return not self.nodes or bool(self.settings.results_dir)

    # -- processing -------------------------------------------------------------------------------------
    def process(self, study_uid: str, task_id: str | None = None, attempt: int = 1) -> Processed:
        """Run the pipeline and stage the results. Raises on failure (see is_transient), and StudyBusy
        while another run of the same study holds it (runs of one study never overlap)."""
        owner = task_id or f"run-{uuid.uuid4()}"
        if not self.audit.claim_run(study_uid, owner, self.settings.broker_visibility_timeout_s,
                                    detail={"task_id": task_id, "attempt": attempt}):
            _, until = self.audit.run_lease(study_uid)
            raise StudyBusy(max(BUSY_RETRY_S, min(until - time.time(), BUSY_RETRY_MAX_S)))
        try:
            return self._process(study_uid, task_id, attempt)
        finally:
            self.audit.release_run(study_uid, owner)

    def _process(self, study_uid: str, task_id: str | None, attempt: int) -> Processed:
        paths = self.spool.instances(study_uid)
        if not paths:
            raise PermanentError("no instances of this study in the spool (removed by retention?)")
        log.info("processing study", study_uid=study_uid, task_id=task_id, attempt=attempt, instances=len(paths))
        with metrics.stage("pipeline"):
            outputs = [o for o in self._predict(paths, self.backend, self.settings) if o.study_uid == study_uid]
        if not outputs:
            raise PermanentError("the pipeline produced no result for this study")
        for output in outputs:  # the UID the spool validated is the one every output names
            if any(str(ds.get("StudyInstanceUID", "")) != study_uid for ds in output.datasets):
                raise PermanentError("a result object names another study than the spooled one")
        analysed = any(getattr(output, "result", None) is not None for output in outputs)
        prior_event = self.prior_result_event(study_uid)
        # events written before the "analysed" flag existed count as analysed: never replaced by a notice
        if not analysed and prior_event is not None and prior_event.get("analysed", True):
            raise PermanentError(NOTHING_LEFT_TO_ANALYSE)
        prior = ResultRecord.from_dict(prior_event["result_record"]) if prior_event is not None else None
        objects = 0
        probability = risk = None
        record: ResultRecord | None = None
        with metrics.stage("dicom_write"):
            for output in outputs:
                # the same result again: the same bytes; a new one: predecessor + rejection note
                record = succeed_output(output, prior)
                if self.write_results_folder:
                    self._write_output(output, self.settings.results_path)
                if self.nodes:
                    self.outbox.add(study_uid, list(output.datasets), self.nodes, result_key(output.summary))
                objects += len(output.datasets)
                summary = output.summary or {}
                probability = summary.get("probability", probability)
                risk = summary.get("risk_level", risk)
        for output in outputs:  # after writing: a write that fails and is retried counts nothing twice
            self._record_gate(study_uid, getattr(output, "result", None))
        state = A.SENDING if self.nodes else A.DONE
        detail = {"objects": objects, "probability": probability, "risk_level": risk, "task_id": task_id,
                  "analysed": analysed, "result_record": record.as_dict() if record is not None else None}
        # Only from PROCESSING: if new instances re-queued the study meanwhile, it stays queued.
        if not self.audit.transition(study_uid, (A.PROCESSING,), state, event="result", detail=detail,
                                     probability=probability, risk_level=risk, error=None,
                                     next_at=time.time() + DELIVERY_LEASE_S):
            self.audit.event(study_uid, "result", **detail)
        log.info("study processed", study_uid=study_uid, task_id=task_id, objects=objects,
                 probability=probability, risk_level=risk)
        self.hooks.result(study_uid, outputs, paths, state)
        if not self.nodes:
            metrics.STUDIES_PROCESSED.inc()
        return Processed(study_uid, objects, probability, risk)

    def prior_result_event(self, study_uid: str) -> dict | None:
        """The "result" event of the last run of this study that wrote one (its record, and whether it
        analysed an image), if any: the audit trail outlives the outbox and the spool (retention), so a
        report arriving weeks later still supersedes the result that was sent."""
        for event in reversed(self.audit.events(study_uid)):
            if event["event"] == "result" and event.get("result_record"):
                return event
        return None

    def _record_gate(self, study_uid: str, result: Any) -> None:
        """Audit and count what the quality gate declined: each view not used, and the study when no view
        was usable ("not assessable": a result, the study still ends done). Reason texts hold measurements
        only, never patient data."""
        if result is None:  # no B-mode image at all: nothing was analysed
            self.audit.event(study_uid, "not assessable", reason=NO_IMAGE, text=NO_IMAGE_TEXT, views_declined={})
            metrics.STUDIES_NOT_ASSESSABLE.labels(reason=NO_IMAGE).inc()
            return
        views: dict[str, str] = {}
        for number, view in enumerate(getattr(result, "views", []) or [], start=1):
            reason = view_declined(view)
            if reason is None:
                continue
            views[str(number)] = reason.code
            if reason.code in QUALITY_CODES:  # label values bounded to the gate's codes
                metrics.VIEWS_DECLINED.labels(reason=reason.code).inc()
        code = getattr(result, "not_assessable_code", None)
        if code is not None:
            self.audit.event(study_uid, "not assessable", reason=code,
                             text=getattr(result, "not_assessable_reason", None), views_declined=views)
            if code in QUALITY_CODES:
                metrics.STUDIES_NOT_ASSESSABLE.labels(reason=code).inc()
            log.info("study not assessable", study_uid=study_uid, reason=code, views_declined=len(views))
        elif views:
            self.audit.event(study_uid, "views declined", views=views)

    # -- delivery ---------------------------------------------------------------------------------------
    def deliver(self, study_uid: str, attempt: int = 1) -> None:
        """Send what is pending to every destination; raises DeliveryPending if something is left."""
        if not self.nodes:
            return
        left: dict[str, int] = {}
        for node in self.nodes:
            pending = self.outbox.pending(study_uid, node)
            if not pending:
                continue
            with metrics.stage("send"):
                report = self.sender.send(pending, node)
            self._skip_refused_notes(study_uid, node, report)
            for path in report.sent:
                self.outbox.mark_sent(study_uid, node, path.stem)
            metrics.OBJECTS_SENT.labels(destination=node.label, outcome="stored").inc(len(report.sent))
            if report.failed:
                metrics.OBJECTS_SENT.labels(destination=node.label, outcome="failed").inc(len(report.failed))
                left[node.label] = len(report.failed)
                reason = sorted(set(report.failed.values()))[0]
                log.warning("delivery incomplete", study_uid=study_uid, destination=node.label,
                            objects=len(report.failed), attempt=attempt, reason=reason)
                self.audit.event(study_uid, "send failed", destination=node.label, objects=len(report.failed),
                                 attempt=attempt, reason=reason)
            if report.sent:
                self.audit.event(study_uid, "sent", destination=node.label, objects=len(report.sent))
                log.info("results sent", study_uid=study_uid, destination=node.label, objects=len(report.sent))
        if left:
            raise DeliveryPending(f"not yet stored at {', '.join(f'{k} ({v})' for k, v in left.items())}")
        if self.audit.transition(study_uid, (A.SENDING, A.PROCESSING, A.FAILED), A.DONE, event="delivered"):
            metrics.STUDIES_PROCESSED.inc()

    def _skip_refused_notes(self, study_uid: str, node: Destination, report: Any) -> None:
        """An IOCM rejection note goes only where the destination accepts Key Object Selection documents:
        one it refuses is marked done for that destination (audited), never retried for ever. Any other
        refused object stays a failure."""
        for path in list(getattr(report, "refused", [])):
            if not is_rejection_note(path):
                continue
            report.failed.pop(path, None)
            self.outbox.mark_sent(study_uid, node, path.stem)
            self.audit.event(study_uid, "rejection note not accepted", destination=node.label)
            log.info("destination does not accept the rejection note", study_uid=study_uid, destination=node.label)

    # -- faults ---------------------------------------------------------------------------------------------
    def dead_letter(self, study_uid: str, exc: BaseException, stage: str, attempts: int) -> None:
        error = A.error_text(exc)  # never a library's message: those quote header values
        self.audit.set_state(study_uid, A.FAILED, event="dead letter",
                             detail={"stage": stage, "attempts": attempts, "error": error}, error=error)
        metrics.STUDIES_FAILED.labels(kind="permanent" if not is_transient(exc) else "transient").inc()
        metrics.STUDIES_DEAD_LETTERED.inc()
        log.error("study failed for good (dead letter)", study_uid=study_uid, stage=stage, attempt=attempts,
                  error=type(exc).__name__)
        self.hooks.failure(study_uid, stage, error, dead=True)

    def will_retry(self, study_uid: str, exc: BaseException, stage: str, attempt: int, delay_s: float) -> None:
        error = A.error_text(exc)
        self.audit.event(study_uid, "retry", stage=stage, attempt=attempt, delay_s=round(delay_s, 1), error=error)
        if stage == "process":
            metrics.STUDIES_FAILED.labels(kind="transient").inc()
        log.warning("transient failure, will retry", study_uid=study_uid, stage=stage, attempt=attempt,
                    seconds=round(delay_s, 1), error=type(exc).__name__)
        self.hooks.failure(study_uid, stage, error, dead=False)


@dataclass
class Next:
    """What the queue should do after one step: nothing more, process again, or deliver (after a delay)."""

    action: str  # "done", "process" or "deliver"
    attempt: int = 1  # the attempt number of that next step
    delay_s: float = 0.0


DELIVERY_LEASE_S = 300.0  # a study being delivered is not claimed again by the embedded queue meanwhile


def run_process(worker: StudyWorker, study_uid: str, task_id: str | None, attempt: int) -> Next:
    """Process (attempt counts from 1), then deliver once; decide retries and the dead letter."""
    s = worker.settings
    try:
        worker.process(study_uid, task_id=task_id, attempt=attempt)
    except StudyBusy as busy:  # not a failure: the same attempt again once the other run has ended
        worker.audit.set_state(study_uid, A.QUEUED, event="waiting for another run",
                               detail={"seconds": round(busy.retry_in_s, 1)}, next_at=time.time() + busy.retry_in_s)
        log.info("study busy in another run, will run after it", study_uid=study_uid, seconds=round(busy.retry_in_s, 1))
        return Next("process", attempt, busy.retry_in_s)
    except Exception as exc:
        if is_transient(exc) and attempt <= s.task_max_retries:
            delay = backoff_s(s.task_retry_backoff_s, attempt)
            worker.will_retry(study_uid, exc, "process", attempt, delay)
            worker.audit.transition(study_uid, (A.PROCESSING,), A.QUEUED, attempts=attempt,
                                    next_at=time.time() + delay)
            return Next("process", attempt + 1, delay)
        worker.dead_letter(study_uid, exc, "process", attempt)
        return Next("done")
    return run_delivery(worker, study_uid, 1)


def run_delivery(worker: StudyWorker, study_uid: str, attempt: int) -> Next:
    s = worker.settings
    try:
        worker.deliver(study_uid, attempt=attempt)
    except Exception as exc:
        if is_transient(exc) and attempt <= s.send_max_retries:
            delay = backoff_s(s.send_backoff_s, attempt)
            worker.will_retry(study_uid, exc, "send", attempt, delay)
            worker.audit.transition(study_uid, (A.SENDING, A.PROCESSING), A.SENDING, send_attempts=attempt,
                                    next_at=time.time() + delay)
            return Next("deliver", attempt + 1, delay)
        worker.dead_letter(study_uid, exc, "send", attempt)
        return Next("done")
    return Next("done")
