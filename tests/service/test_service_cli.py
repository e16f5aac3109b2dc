"""The embedded default as a user runs it: `llnm serve` with nothing but a data dir and ports set, a
phantom study sent with `llnm send`, then `llnm studies`, `llnm status` and `llnm requeue`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from support import VENV_BIN, free_port, wait_for

from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL

MODELS_READY = all((Path(__file__).resolve().parents[2] / "model_repository" / m / "1" / "model.onnx").is_file()
                   for m in (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL))

pytestmark = pytest.mark.slow


def llnm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "llnm"), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def served(tmp_path: Path):
    env = dict(os.environ, LLNM_DATA_DIR=str(tmp_path / "data"), LLNM_PORT=str(free_port()),
               LLNM_METRICS_PORT=str(free_port()), LLNM_SERIES_IDLE_S="0.5", LLNM_STUDY_IDLE_S="0.5",
               LLNM_BIND_ADDRESS="127.0.0.1", LLNM_MIN_FREE_DISK_MB="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    for key in ("LLNM_BROKER_URL", "LLNM_DESTINATIONS", "LLNM_INFERENCE_BACKEND", "LLNM_RESULTS_DIR"):
        env.pop(key, None)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(VENV_BIN / "llnm"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def alive() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{env['LLNM_METRICS_PORT']}/healthz", timeout=1).status == 200
        except OSError:
            return False

    assert wait_for(alive, 60, 0.2)
    yield env, tmp_path
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_serve_send_status_studies_requeue(served):
    env, tmp_path = served
    phantom = tmp_path / "phantom"
    run = llnm("phantom", "--out", str(phantom), "--studies", "1", "--seed", "5", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    uid = next(phantom.glob("*/*.dcm")).parent.name
    (phantom / "notes.txt").write_text("not DICOM")
    sent = llnm("send", str(phantom), "--to", f"LLNM@127.0.0.1:{env['LLNM_PORT']}", "--aet", "MODALITY", env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "sent 3, failed 0" in sent.stdout and "skipped" in sent.stdout

    def final() -> dict | None:
        out = llnm("studies", "--json", env=env)
        rows = [r for r in json.loads(out.stdout) if r["study_uid"] == uid]
        return rows[0] if rows and rows[0]["state"] in ("done", "failed") else None

    row = wait_for(final, 120, 0.5)
    assert row, llnm("status", uid, env=env).stdout
    status = llnm("status", uid, env=env)
    assert status.returncode == 0 and uid in status.stdout and "study complete" in status.stdout
    if MODELS_READY:
        assert row["state"] == "done", status.stdout
        summary = json.loads((tmp_path / "data" / "results" / uid / "summary.json").read_text())
        assert summary["study_uid"] == uid
    else:  # no trained models yet: a permanent fault, straight to the dead letter, and requeue-able
        assert row["state"] == "failed" and "ModelNotFound" in row["error"], status.stdout
        assert uid in llnm("studies", "--failed", env=env).stdout
        again = llnm("requeue", "--all-failed", env=env)
        assert again.returncode == 0 and f"queued {uid}" in again.stdout
        assert wait_for(final, 60, 0.5)
        events = [e["event"] for e in json.loads(llnm("status", uid, "--json", env=env).stdout)["events"]]
        assert events.count("dead letter") == 2 and "requeued" in events
    assert llnm("status", "1.2.3.4.5", env=env).returncode == 1
    bad = llnm("requeue", "9.9.9", env=env)
    assert bad.returncode == 1 and "NOT queued" in bad.stdout
