"""The embedded queue of `llnm serve`: no broker, the audit database is the queue.

The listener's completion marks a study `queued`; worker threads here claim due studies atomically
(queued -> processing), and deliver `sending` ones whose backoff has passed. It survives restarts like
the Celery queue does: at start-up, a study left `processing` by a crash is queued again, and pending
deliveries are due at once. The listener's `enqueue` wakes an idle thread at once (the poll is only the
fallback for work that falls due later: retries, delivery backoff).
"""

from __future__ import annotations

import threading
import time

from llnm import audit as A
from llnm.observability import metrics
from llnm.observability.logs import get_logger
from llnm.worker.process import DELIVERY_LEASE_S, StudyWorker, run_delivery, run_process

log = get_logger(__name__)


class LocalQueue:
    def __init__(self, worker: StudyWorker, threads: int = 1, poll_s: float = 0.5) -> None:
        self.worker = worker
        self.audit = worker.audit
        self.threads = max(1, threads)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._workers: list[threading.Thread] = []

    def enqueue(self, study_uid: str) -> str | None:
        """The completion tracker has already marked the study queued: wake a thread to pick it up now."""
        self._wake.set()
        return None

    def recover(self) -> None:
        self.audit.release_all_runs()  # the runs of the process before this one ended with it
        for uid in self.audit.reset_states(A.PROCESSING, A.QUEUED, "queued again after a restart"):
            log.info("study interrupted by a restart queued again", study_uid=uid)
        self.audit.due_now(A.SENDING)

    def run_once(self) -> bool:
        """Claim and run one due step; False when nothing was due."""
        job = self.audit.claim_due(A.QUEUED, A.PROCESSING)
        if job is not None:
            uid = job["study_uid"]
            step = run_process(self.worker, uid, f"local-{int(time.time() * 1000)}", job["attempts"] + 1)
            if step.action == "deliver":
                log.debug("delivery scheduled", study_uid=uid, seconds=step.delay_s)
            return True
        job = self.audit.claim_due(A.SENDING, A.SENDING, lease_s=DELIVERY_LEASE_S)
        if job is not None:
            run_delivery(self.worker, job["study_uid"], job["send_attempts"] + 1)
            return True
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("embedded queue step failed")
                busy = False
            if not busy:
                self._wake.wait(self.poll_s)
                self._wake.clear()  # a wake-up set after this still meets the run_once that follows

    def worker_threads(self) -> list[threading.Thread]:
        """The worker threads (the console's health page shows how many are alive)."""
        return list(self._workers)

    def depth(self) -> int:
        return self.audit.count_by_state().get(A.QUEUED, 0)

    def refresh_gauges(self) -> None:
        metrics.QUEUE_DEPTH.set(self.depth())

    def start(self) -> "LocalQueue":
        self.recover()
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"llnm-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._workers:
            t.join(timeout=timeout_s)
