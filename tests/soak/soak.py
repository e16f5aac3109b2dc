"""Load and faults against the real service: `llnm listener` + `llnm worker` processes on a private Redis,
results C-STOREd to a real Orthanc, while Redis restarts, workers are SIGKILLed, Orthanc goes away and
the listener is SIGKILLed mid-association. Afterwards the counts are computed from what the senders were
told (Success only), the service's audit trail and Orthanc's REST API, and must add up.

The CI test (`tests/soak/test_soak.py`) runs it bounded; operators run it longer:

    .venv/bin/python tests/soak/soak.py --studies 400 --send-seconds 300 --report var/soak/report.json

Needs redis-server, Orthanc (scripts/test-services.sh installs both) and the models in model_repository/.
Prints one JSON report (counts, losses, latency percentiles, faults, the machine); exit status 1 if a
check failed. Everything runs on loopback with its own ports and a private Redis.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "service"))

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from support import REPO_ROOT, VENV_BIN, Orthanc, free_port, wait_for  # noqa: E402

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
#: pydicom's real ultrasound file the pipeline finds an image in (a 30-frame JPEG Baseline cine); its other
#: ultrasound files are colour Doppler or palette images, "no usable image" by design (no result to deliver)
REAL_FILES = ("examples_ybr_color.dcm",)
CALLING_AE = "MODALITY"


# -- the studies ----------------------------------------------------------------------------------------
@dataclass
class Study:
    uid: str
    files: list[Path]
    kind: str  # "phantom" or "real"
    multiframe: bool = False


def _renamed(ds: pydicom.Dataset, study_uid: str | None = None, series_uid: str | None = None) -> pydicom.Dataset:
    ds = copy.deepcopy(ds)
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _multiframe(ds: pydicom.Dataset, frames: int) -> pydicom.Dataset:
    """An uncompressed single-frame image as an Ultrasound Multi-frame image of `frames` frames."""
    ds = _renamed(ds)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.NumberOfFrames = frames
    ds.FrameTime = 33.3
    ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = bytes(ds.PixelData) * frames
    return ds


def make_studies(out: Path, n: int, seed: int, real_fraction: float = 0.2, multiframe_fraction: float = 0.3,
                 rows: int = 128, cols: int = 160) -> list[Study]:
    """`n` studies of 2 to 10 instances: phantoms (small frames, some with multi-frame images) and studies
    made of real ultrasound files (pydicom's test data, `REAL_FILES`)."""
    from pydicom.data import get_testdata_file

    rng = random.Random(seed)
    n_real = round(n * real_fraction)
    n_phantom = n - n_real
    studies: list[Study] = []
    if n_phantom:
        run = subprocess.run([str(VENV_BIN / "llnm"), "phantom", "--out", str(out / "phantom"), "--studies",
                              str(n_phantom), "--seed", str(seed), "--rows", str(rows), "--cols", str(cols)],
                             capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"llnm phantom failed: {run.stderr[-2000:]}")
    for folder in sorted(p for p in (out / "phantom").glob("*") if p.is_dir() and p.name[0].isdigit()):
        sr, images = folder / "SR_report.dcm", sorted(folder.glob("US_*.dcm"))
        want = rng.randint(2, 10)
        files = images + ([sr] if want > len(images) and sr.is_file() else [])
        multiframe = rng.random() < multiframe_fraction
        base = pydicom.dcmread(images[0])
        for i in range(want - len(files)):
            extra = _multiframe(base, rng.randint(2, 4)) if multiframe and i == 0 else _renamed(base)
            path = folder / f"extra_{i}.dcm"
            extra.save_as(path, enforce_file_format=True)
            files.append(path)
        studies.append(Study(folder.name, files, "phantom", multiframe))
    real_sources = [pydicom.dcmread(get_testdata_file(name, download=False)) for name in REAL_FILES]
    for i in range(n_real):
        source = real_sources[i % len(real_sources)]
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = out / "real" / study_uid
        folder.mkdir(parents=True)
        files = []
        for j in range(rng.randint(2, 3)):
            ds = _renamed(source, study_uid, series_uid)
            ds.PatientName, ds.PatientID = f"Soak^Real{i}", f"SOAK-REAL-{i}"
            ds.InstanceNumber = j + 1
            path = folder / f"real_{j}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        studies.append(Study(study_uid, files, "real", int(source.get("NumberOfFrames", 1) or 1) > 1))
    rng.shuffle(studies)
    return studies


# -- the processes --------------------------------------------------------------------------------------
class Proc:
    """A subprocess with its own log file, started again with the same command after a kill."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=REPO_ROOT, start_new_session=True)
        log.close()
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, sig: int, wait_s: float = 20.0) -> None:
        if not self.alive():
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def kill9(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self.send_signal(signal.SIGTERM)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Redis(Proc):
    """A private redis-server with the deployment's persistence (AOF, fsync every second)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        data = workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data),
               "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no"]
        super().__init__("redis", cmd, dict(os.environ), workdir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except Exception:
            return False

    def start(self) -> "Redis":
        super().start()
        if not wait_for(self.ready, 20, 0.1):
            raise RuntimeError(f"redis-server did not start: {self.tail()}")
        return self


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Service(Proc):
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, metrics_port: int) -> None:
        super().__init__(name, [str(VENV_BIN / "llnm"), *args], dict(env, LLNM_METRICS_PORT=str(metrics_port)),
                         log_dir)
        self.metrics_port = metrics_port

    def start_ready(self, timeout_s: float = 120.0) -> "Service":
        self.start()
        if not wait_for(lambda: _ready(self.metrics_port) or not self.alive(), timeout_s, 0.2) or not self.alive():
            raise RuntimeError(f"{self.name} not ready: {self.tail()}")
        return self


# -- sending ---------------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the senders were told: the SOP Instance UIDs answered Success, per study, and when."""

    success: dict[str, dict[str, float]] = field(default_factory=dict)  # study -> sop -> time of Success
    failures: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    in_association: int = 0
    studies_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_study(study: Study, port: int, ledger: Ledger, deadline: float) -> bool:
    """C-STORE the study; resend what did not get Success (a failure status, an abort, a refused
    association) until every instance has it or the deadline passes."""
    from llnm.dimse import parse_node
    from llnm.worker.sender import dicom_header, send_files

    node = parse_node(f"LLNM@127.0.0.1:{port}")
    sop = {p: dicom_header(p)[1] for p in study.files}
    done: set[Path] = set()
    while time.monotonic() < deadline:
        todo = [p for p in study.files if p not in done]
        with ledger.lock:
            ledger.attempts += 1
            ledger.in_association += 1
        try:
            report = send_files(todo, node, CALLING_AE, timeout_s=20)
        finally:
            with ledger.lock:
                ledger.in_association -= 1
        now = time.time()
        with ledger.lock:
            for p in report.sent:
                ledger.success.setdefault(study.uid, {})[sop[p]] = now
                done.add(p)
            for p, reason in report.failed.items():
                ledger.failures.append({"t": now, "study_uid": study.uid, "reason": reason})
        if len(done) == len(study.files):
            with ledger.lock:
                ledger.studies_sent += 1
            return True
        time.sleep(0.5)
    return False


def run_senders(studies: list[Study], port_of: Any, ledger: Ledger, associations: int, send_seconds: float,
                deadline: float) -> list[threading.Thread]:
    """`associations` threads, each sending one study per association, paced so the load lasts about
    `send_seconds` (the faults happen during it)."""
    queue = list(studies)
    lock = threading.Lock()
    interval = send_seconds * associations / max(1, len(studies))

    def loop() -> None:
        while True:
            with lock:
                if not queue:
                    return
                study = queue.pop(0)
            started = time.monotonic()
            send_study(study, port_of(), ledger, deadline)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    threads = [threading.Thread(target=loop, name=f"sender-{i}", daemon=True) for i in range(associations)]
    for t in threads:
        t.start()
    return threads


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class Config:
    studies: int = 200
    associations: int = 4
    workers: int = 2
    send_seconds: float = 90.0
    seed: int = 8
    orthanc_down_s: float = 12.0
    drain_timeout_s: float = 900.0  # at most this long after the load for every study to finish
    stall_timeout_s: float = 150.0  # ... and no longer than this without any study finishing
    faults: bool = True
    workdir: Path | None = None


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, max(0, int(round(p * (len(v) - 1)))))], 2)

    return {"n": len(v), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(v[-1], 2)}


def service_env(workdir: Path, redis_url: str, orthanc: Orthanc, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LLNM_DATA_DIR": str(workdir / "data"), "LLNM_BROKER_URL": redis_url, "LLNM_QUEUE_NAME": "llnm",
        "LLNM_BROKER_VISIBILITY_TIMEOUT_S": "20", "LLNM_BIND_ADDRESS": "127.0.0.1", "LLNM_PORT": str(port),
        "LLNM_AE_TITLE": "LLNM", "LLNM_ALLOWED_AES": CALLING_AE, "LLNM_SERIES_IDLE_S": "2",
        "LLNM_STUDY_IDLE_S": "2", "LLNM_DESTINATIONS": orthanc.node, "LLNM_SEND_BACKOFF_S": "1",
        "LLNM_SEND_MAX_RETRIES": "40", "LLNM_TASK_RETRY_BACKOFF_S": "1", "LLNM_TASK_MAX_RETRIES": "10",
        "LLNM_NETWORK_TIMEOUT_S": "10", "LLNM_MIN_FREE_DISK_MB": "1", "LLNM_MAX_ASSOCIATIONS": "16",
        "LLNM_INFERENCE_BACKEND": "onnxruntime", "LLNM_ORT_THREADS": "1", "LLNM_WORKER_CONCURRENCY": "1",
        "LLNM_LOG_LEVEL": "INFO", "LLNM_LOG_FORMAT": "json", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    })
    return env


class Faults(threading.Thread):
    """The faults, each once the load has reached its share of the studies sent."""

    def __init__(self, cfg: Config, ledger: Ledger, total: int, redis: Redis, orthanc: Orthanc,
                 listener: Service, workers: list[Service]) -> None:
        super().__init__(name="faults", daemon=True)
        self.cfg, self.ledger, self.total = cfg, ledger, total
        self.redis, self.orthanc, self.listener, self.workers = redis, orthanc, listener, workers
        self.log: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def _at(self, share: float) -> None:
        wait_for(lambda: self.ledger.studies_sent >= share * self.total, self.cfg.send_seconds * 3, 0.2)

    def _record(self, fault: str, **detail: Any) -> None:
        self.log.append({"fault": fault, "t": round(time.time(), 2), "studies_sent": self.ledger.studies_sent,
                         **detail})

    def kill_worker(self, i: int) -> None:
        worker = self.workers[i % len(self.workers)]
        worker.kill9()
        self._record("worker SIGKILL", worker=worker.name)
        time.sleep(1.0)
        worker.start_ready()
        self._record("worker restarted", worker=worker.name)

    def run(self) -> None:
        try:
            self._at(0.12)
            self.kill_worker(0)
            self._at(0.28)
            self.redis.stop()
            self._record("redis stopped (SIGTERM)")
            time.sleep(2.0)
            self.redis.start()
            self._record("redis started")
            self._at(0.42)
            self.orthanc.stop()
            self._record("orthanc stopped")
            time.sleep(self.cfg.orthanc_down_s)
            self.orthanc.start()
            self._record("orthanc started")
            self._at(0.58)
            wait_for(lambda: self.ledger.in_association > 0, 30, 0.01)
            busy = self.ledger.in_association
            self.listener.kill9()
            self._record("listener SIGKILL", associations_in_flight=busy)
            time.sleep(1.0)
            self.listener.start_ready()
            self._record("listener restarted")
            self._at(0.72)
            self.kill_worker(1)
            self._at(0.85)
            self.kill_worker(0)
        except BaseException as exc:  # reported, and the run's checks fail on it
            self.error = exc


def run_soak(cfg: Config) -> dict[str, Any]:
    """Run the load and the faults; return the report (its `checks` say what held)."""
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="llnm-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    studies = make_studies(workdir / "studies", cfg.studies, cfg.seed)
    t_studies = time.time() - t0
    redis = Redis(workdir).start()
    orthanc = Orthanc(workdir / "orthanc").start()
    port = free_port()
    env = service_env(workdir, redis.url, orthanc, port)
    listener = Service("listener", ["listener"], env, workdir, free_port())
    workers = [Service(f"worker-{i}", ["worker"], env, workdir, free_port()) for i in range(cfg.workers)]
    procs: list[Proc] = [listener, *workers]
    ledger = Ledger()
    faults = None
    try:
        listener.start_ready()
        for w in workers:
            w.start_ready()
        started = time.time()
        deadline = time.monotonic() + cfg.send_seconds * 3 + 120
        senders = run_senders(studies, lambda: port, ledger, cfg.associations, cfg.send_seconds, deadline)
        if cfg.faults:
            faults = Faults(cfg, ledger, len(studies), redis, orthanc, listener, workers)
            faults.start()
        for t in senders:
            t.join()
        send_done = time.time()
        if faults is not None:
            faults.join(timeout=180)
        report = drain_and_check(cfg, workdir, studies, ledger, orthanc, env, started)
        report["seconds"] = {"make_studies": round(t_studies, 1), "send": round(send_done - started, 1),
                             "total": round(time.time() - t0, 1)}
        report["faults"] = faults.log if faults else []
        if faults is not None and faults.error is not None:
            report["checks"]["faults ran"] = f"failed: {type(faults.error).__name__}: {faults.error}"
        report["process_starts"] = {p.name: p.starts for p in procs}
        report["workdir"] = str(workdir)
        return report
    finally:
        for p in reversed(procs):
            p.stop()
        orthanc.stop()
        redis.stop()


def drain_and_check(cfg: Config, workdir: Path, studies: list[Study], ledger: Ledger, orthanc: Orthanc,
                    env: dict[str, str], started: float) -> dict[str, Any]:
    """Wait until every study that got a Success is done, then compute the counts from three sources:
    the senders' ledger, the audit trail and Orthanc."""
    from llnm import MANUFACTURER
    from llnm import audit as A
    from llnm.audit import AuditTrail
    from llnm.config import Settings
    from llnm.worker.destinations import parse_destinations
    from llnm.worker.maintenance import apply_retention
    from llnm.storage.outbox import Outbox

    settings = Settings.from_env(env)
    audit = AuditTrail.for_data_dir(settings.data_dir)
    expected = sorted(ledger.success)

    def settled() -> int:
        states = [(audit.study(uid) or {}).get("state") for uid in expected]
        return sum(1 for s in states if s in (A.DONE, A.FAILED))

    # Wait while studies keep finishing: a slow or shared machine only takes longer; a study stuck for
    # good (a lost task) stops the progress, and the check below names it.
    end, last, last_change = time.monotonic() + cfg.drain_timeout_s, -1, time.monotonic()
    while time.monotonic() < end:
        count = settled()
        if count == len(expected):
            break
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > cfg.stall_timeout_s:
            break
        time.sleep(1.0)
    drained = settled() == len(expected)
    drained_at = time.time()
    nodes = parse_destinations(settings.destinations)
    outbox = Outbox(settings.outbox_dir)
    rows = {uid: audit.study(uid) or {} for uid in expected}
    events = {uid: audit.events(uid) for uid in expected}
    spool_files = {uid: len(list((settings.spool_dir / uid).glob("*/*.dcm"))) for uid in expected}

    ours = {}
    for uid in expected:
        instances = orthanc.study_instances(uid)
        ours[uid] = [i for i in instances if i.get("Manufacturer") == MANUFACTURER]
    sr_counts = {uid: sum(1 for i in ours[uid] if i.get("Modality") == "SR") for uid in expected}
    rounds = {uid: sum(1 for e in events[uid] if e["event"] == "result") for uid in expected}
    reopened = [uid for uid in expected if any(e["event"] in ("reopened", "more instances while queued")
                                               for e in events[uid])]
    success_count = sum(len(v) for v in ledger.success.values())
    produced = {uid: ([e.get("objects", 0) for e in events[uid] if e["event"] == "result"] or [0])[-1]
                for uid in expected}
    not_processed = []
    for uid in expected:
        last_success = max(ledger.success[uid].values())
        processed = [e["ts"] for e in events[uid] if e["event"] == "processing"]
        if rows[uid].get("state") != A.DONE or not processed or max(processed) < last_success - 0.5:
            not_processed.append(uid)
    latency_e2e, latency_queue, latency_work = [], [], []
    for uid in expected:
        delivered = [e["ts"] for e in events[uid] if e["event"] == "delivered"]
        complete = [e["ts"] for e in events[uid] if e["event"] == "study complete"]
        processing = [e["ts"] for e in events[uid] if e["event"] == "processing"]
        if delivered:
            latency_e2e.append(max(delivered) - max(ledger.success[uid].values()))
            if complete:
                latency_queue.append(max(delivered) - max(complete))
            if processing:
                latency_work.append(max(delivered) - max(processing))
    leftovers = [str(p.relative_to(settings.spool_dir)) for p in settings.spool_dir.rglob("*")
                 if p.is_file() and p.name.startswith((".in-", ".tmp-"))]
    pending_outbox = outbox.pending_count(nodes)
    removed = apply_retention(settings, audit, now=time.time() + settings.retention_hours * 3600 + 60)
    left_in_spool = [p for p in settings.spool_dir.rglob("*.dcm")]
    left_in_outbox = [p for p in settings.outbox_dir.rglob("*.dcm")]

    counts = {
        "studies_made": len(studies),
        "studies_with_success": len(expected),
        "studies_fully_sent": ledger.studies_sent,
        "instances_made": sum(len(s.files) for s in studies),
        "instances_success": success_count,
        "instances_in_audit": sum(int(rows[uid].get("instances") or 0) for uid in expected),
        "instances_in_spool": sum(spool_files.values()),
        "sender_failures": len(ledger.failures),
        "sender_attempts": ledger.attempts,
        "studies_done": sum(1 for uid in expected if rows[uid].get("state") == A.DONE),
        "studies_failed": sum(1 for uid in expected if rows[uid].get("state") == A.FAILED),
        "studies_in_orthanc": sum(1 for uid in expected if ours[uid]),
        "sr_in_orthanc": sum(sr_counts.values()),
        "result_rounds": sum(rounds.values()),
        "studies_reopened": len(reopened),
        "objects_in_orthanc": sum(len(v) for v in ours.values()),
        "objects_sent_per_audit": sum(e.get("objects", 0) for uid in expected for e in events[uid]
                                      if e["event"] == "sent"),
        "objects_in_last_results": sum(produced.values()),
        "outbox_pending": pending_outbox,
        "temp_files_left": len(leftovers),
        "removed_by_retention": len(removed),
        "spool_files_after_retention": len(left_in_spool),
        "outbox_files_after_retention": len(left_in_outbox),
        "multiframe_studies": sum(1 for s in studies if s.multiframe),
        "real_file_studies": sum(1 for s in studies if s.kind == "real"),
    }
    lost = [uid for uid in expected if not ours[uid]]
    wrong_objects = [uid for uid in expected if len(ours[uid]) < produced[uid] or produced[uid] == 0
                     or (uid not in reopened and len(ours[uid]) != produced[uid])]
    wrong_sr = [uid for uid in expected if not (1 <= sr_counts[uid] <= max(1, rounds[uid]))
                or (uid not in reopened and sr_counts[uid] != 1)]
    audit_mismatch = [uid for uid in expected if int(rows[uid].get("instances") or 0) != len(ledger.success[uid])
                      or spool_files[uid] != len(ledger.success[uid])]

    def check(ok: bool, detail: Any = None) -> str:
        return "ok" if ok else f"failed: {detail}"

    checks = {
        "drained within the timeout": check(drained, {u: rows[u].get("state") for u in expected
                                                      if rows[u].get("state") not in (A.DONE, A.FAILED)}),
        "every study fully sent (Success for each instance, resends allowed)":
            check(ledger.studies_sent == len(studies), ledger.studies_sent),
        "every Success instance processed (study done, processed after its last Success)":
            check(not not_processed, not_processed[:5]),
        "no study failed": check(counts["studies_failed"] == 0,
                                 [(u, rows[u].get("error")) for u in expected if rows[u].get("state") == A.FAILED][:5]),
        "audit and spool count exactly the Success instances": check(not audit_mismatch, [
            (u, rows[u].get("instances"), spool_files[u], len(ledger.success[u])) for u in audit_mismatch[:5]]),
        "every study's result in Orthanc (losses = 0)": check(not lost, lost[:5]),
        "one SR per study (one per result round where a study was reopened)": check(not wrong_sr, [
            (u, sr_counts[u], rounds[u]) for u in wrong_sr[:5]]),
        "Orthanc holds exactly the objects of each study's result (all of the last where reopened)":
            check(not wrong_objects, [(u, len(ours[u]), produced[u]) for u in wrong_objects[:5]]),
        "outbox empty (nothing pending)": check(pending_outbox == 0, pending_outbox),
        "no temp or partial files in the spool": check(not leftovers, leftovers[:5]),
        "retention leaves spool and outbox empty": check(not left_in_spool and not left_in_outbox,
                                                         (len(left_in_spool), len(left_in_outbox))),
    }
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
        "counts": counts,
        "losses": len(lost),
        "latency_s": {
            "last_success_to_delivered": percentiles(latency_e2e),
            "study_complete_to_delivered": percentiles(latency_queue),
            "processing_to_delivered": percentiles(latency_work),
            "note": "from the audit trail: the last instance's Success (sender), the listener's 'study "
                    "complete' event or the worker's last 'processing' event, to the worker's 'delivered' "
                    "event; the first includes the completion timers (series 2 s + study 2 s); the first two "
                    "include the time queued (studies arriving faster than the workers process them) and "
                    "every fault's delay",
        },
        "drain_s": round(drained_at - started, 1),
        "checks": checks,
        "ok": all(v == "ok" for v in checks.values()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "sender_failure_reasons": sorted({f["reason"] for f in ledger.failures}),
    }


def services_available() -> str | None:
    """None when the soak can run here, else why not."""
    missing = [t for t in ("redis-server", "Orthanc") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)} (scripts/test-services.sh installs them)"
    from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL

    repo = Path(os.environ.get("LLNM_MODEL_REPOSITORY") or REPO_ROOT / "model_repository")
    absent = [m for m in (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL) if not (repo / m / "1" / "model.onnx").is_file()]
    if absent:
        return f"needs the models in {repo}: {', '.join(absent)} (make setup exports the text encoder)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--send-seconds", type=float, default=300.0, help="pace the load over about this long")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--no-faults", action="store_true", help="load only")
    parser.add_argument("--report", type=Path, default=None, help="also write the JSON report here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    args = parser.parse_args(argv)
    why = services_available()
    if why:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    cfg = Config(studies=args.studies, associations=args.associations, workers=args.workers,
                 send_seconds=args.send_seconds, seed=args.seed, faults=not args.no_faults, workdir=args.workdir,
                 drain_timeout_s=max(900.0, 3 * args.send_seconds))
    report = run_soak(cfg)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    if args.workdir is None:
        shutil.rmtree(report["workdir"], ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
