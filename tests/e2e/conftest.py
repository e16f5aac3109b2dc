"""End-to-end fixtures: real Orthanc (the PACS), Redis (the broker, own key prefix), `llnm listener` and
`llnm worker` as subprocesses, and the real tritonserver when the pipeline's models exist."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from support import REPO_ROOT, VENV_BIN, Orthanc, Service, free_port, wait_for  # noqa: E402
from triton_harness import TritonServer, triton_root  # noqa: E402

from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL  # noqa: E402

MODEL_REPOSITORY = Path(os.environ.get("LLNM_MODEL_REPOSITORY") or REPO_ROOT / "model_repository")
MODELS = (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL)
STANDIN_WORKER = Path(__file__).with_name("standin_worker.py")


def models_ready() -> bool:
    return all((MODEL_REPOSITORY / m / "1" / "model.onnx").is_file() for m in MODELS)


def redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    missing = [t for t in ("Orthanc", "storescu") if not shutil.which(t)]
    reason = None
    if missing:
        reason = f"needs {', '.join(missing)} (scripts/test-services.sh installs them)"
    elif not redis_up():
        reason = "needs Redis on 127.0.0.1:6379 (scripts/test-services.sh starts it)"
    if reason:
        here = Path(__file__).parent
        for item in items:
            if Path(str(item.fspath)).parent == here:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    """The real Triton server with the pipeline's models, or None (the stand-in needs no models)."""
    if not models_ready() or triton_root() is None:
        if os.environ.get("CI") == "true":  # CI installs the Triton server: a missing one fails, never a stand-in
            pytest.fail("tritonserver or the trained models are missing (scripts/test-services.sh installs it)")
        yield None
        return
    server = TritonServer(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"), list(MODELS)).start(timeout_s=120)
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path: Path, orthanc, triton):
    """A function starting listener + worker for one test, sharing a data dir; all stopped at the end."""
    prefix = f"llnm-test-{uuid.uuid4().hex[:10]}:"
    started: list[Service] = []
    data_dir = tmp_path / "data"
    use_standin = triton is None

    env = dict(os.environ)
    env.update({
        "LLNM_DATA_DIR": str(data_dir), "LLNM_BROKER_URL": "redis://127.0.0.1:6379/0",
        "LLNM_BROKER_KEY_PREFIX": prefix, "LLNM_QUEUE_NAME": "llnm", "LLNM_BROKER_VISIBILITY_TIMEOUT_S": "15",
        "LLNM_BIND_ADDRESS": "127.0.0.1", "LLNM_PORT": str(free_port()), "LLNM_AE_TITLE": "LLNM",
        "LLNM_ALLOWED_AES": "MODALITY,PACS", "LLNM_SERIES_IDLE_S": "1", "LLNM_STUDY_IDLE_S": "1",
        "LLNM_DESTINATIONS": orthanc.node, "LLNM_SENDER_AE_TITLE": "LLNM", "LLNM_SEND_BACKOFF_S": "1",
        "LLNM_SEND_MAX_RETRIES": "30", "LLNM_TASK_RETRY_BACKOFF_S": "1", "LLNM_NETWORK_TIMEOUT_S": "10",
        "LLNM_MIN_FREE_DISK_MB": "1", "LLNM_LOG_LEVEL": "INFO", "LLNM_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TCP_NODELAY": "1",
    })
    if triton is not None:
        env.update({"LLNM_INFERENCE_BACKEND": "triton", "LLNM_TRITON_URL": triton.http_url})

    class Stack:
        standin = use_standin
        settings_env = env
        dicom_port = int(env["LLNM_PORT"])

        def __init__(self) -> None:
            self.listener_metrics = free_port()
            self.worker_metrics = free_port()

        def listener(self, **extra: str) -> Service:
            e = dict(env, LLNM_METRICS_PORT=str(self.listener_metrics), **extra)
            s = Service(f"listener-{len(started)}", [str(VENV_BIN / "llnm"), "listener"], e, tmp_path).start()
            started.append(s)
            return s.wait_ready(self.listener_metrics)

        def worker(self, **extra: str) -> Service:
            e = dict(env, LLNM_METRICS_PORT=str(self.worker_metrics), **extra)
            cmd = [str(VENV_BIN / "python"), str(STANDIN_WORKER)] if use_standin else [str(VENV_BIN / "llnm"),
                                                                                       "worker"]
            s = Service(f"worker-{len(started)}", cmd, e, tmp_path).start()
            started.append(s)
            return s.wait_ready(self.worker_metrics)

        def audit(self):
            from llnm.audit import AuditTrail

            return AuditTrail.for_data_dir(data_dir)

    yield Stack()
    for s in reversed(started):
        s.stop()
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
