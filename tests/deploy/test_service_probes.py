"""What the chart's probes and secrets rely on in the services themselves: `/healthz` fails when the
listener's accept loop or completion loop stops (not only when the process dies), `/readyz` of the
listener stays ready through a broker outage (advisory check), unknown LLNM_* variables and an empty
allow-list are warned about at start, rotated TLS files are used without a restart, and `llnm smoke-test`
(the `helm test` hook) passes against a running listener and worker and fails with a reason otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deploy_support import REPO

sys.path.insert(0, str(REPO / "tests" / "service"))
from support import free_port, standin_predict, standin_write_output, wait_for  # noqa: E402

from llnm.config import Settings  # noqa: E402
from llnm.observability.health import Heartbeat, HealthServer  # noqa: E402


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM", bind_address="127.0.0.1",
                  series_idle_s=0.3, study_idle_s=0.3, metrics_port=0, min_free_disk_mb=1, network_timeout_s=10.0)
    values.update(overrides)
    return Settings(**values)


# -- /healthz and /readyz -----------------------------------------------------------------------------------
def test_healthz_fails_when_a_heartbeat_falls_silent():
    now = [0.0]
    beat = Heartbeat(10.0, clock=lambda: now[0])
    health = HealthServer(0, host="127.0.0.1", heartbeats={"accept loop": beat}).start()
    try:
        assert _get(health.port, "/healthz") == (200, "ok\n")
        now[0] = 11.0
        code, body = _get(health.port, "/healthz")
        assert code == 503 and "accept loop: FAIL" in body
        beat.beat()
        assert _get(health.port, "/healthz")[0] == 200
    finally:
        health.stop()


def test_readyz_reports_advisory_checks_without_going_unready():
    def broker_down() -> tuple[bool, str]:
        raise ConnectionRefusedError("no broker")

    health = HealthServer(0, {"spool writable": lambda: (True, "")}, host="127.0.0.1",
                          advisory={"broker": broker_down}).start()
    try:
        code, body = _get(health.port, "/readyz")
        answer = json.loads(body)
        assert code == 200 and answer["ready"] is True
        assert answer["advisory"]["broker"].startswith("FAIL") and "ConnectionRefusedError" in answer["advisory"]["broker"]
    finally:
        health.stop()


def test_listener_loops_beat_and_a_dead_accept_loop_fails_liveness(tmp_path):
    from llnm.listener.app import Listener

    listener = Listener(_settings(tmp_path), lambda uid: None, completion_interval_s=0.05).start()
    health = HealthServer(0, host="127.0.0.1", heartbeats=listener.heartbeats).start()
    try:
        first = {name: hb.last for name, hb in listener.heartbeats.items()}
        assert wait_for(lambda: all(hb.last > first[n] for n, hb in listener.heartbeats.items()), 5)
        assert _get(health.port, "/healthz")[0] == 200
        # the accept loop stops (as if its thread died); the DICOM port no longer accepts
        listener._server.shutdown()
        listener._server = None
        accept = listener.heartbeats["accept loop"]
        accept.max_age_s = 0.5
        time.sleep(0.8)
        code, body = _get(health.port, "/healthz")
        assert code == 503 and "accept loop" in body and "completion loop: ok" in body
    finally:
        health.stop()
        listener.stop()


def test_listener_readiness_does_not_hold_the_broker(tmp_path, monkeypatch):
    """run_listener's checks: spool and disk decide readiness; the broker is advisory."""
    import llnm.service as service

    seen: dict = {}

    def fake_health(settings, checks, on_scrape=None, advisory=None, heartbeats=None):
        seen.update(checks=set(checks), advisory=set(advisory or {}), heartbeats=set(heartbeats or {}))
        raise SystemExit(0)

    monkeypatch.setattr(service, "_health", fake_health)
    with pytest.raises(SystemExit):
        service.run_listener(_settings(tmp_path, broker_url="redis://127.0.0.1:1/0"))
    assert seen == {"checks": {"spool writable", "spool disk"}, "advisory": {"broker"},
                    "heartbeats": {"accept loop", "completion loop"}}


# -- settings ----------------------------------------------------------------------------------------------
def test_unknown_llnm_variables_are_listed_and_warned_about(tmp_path, monkeypatch, caplog):
    import logging

    from llnm.service import warn_about_settings

    env = {"LLNM_PORT": "11112", "LLNM_ALLOWED_AE": "PACS", "LLNM_DESTINATION": "X@y:1", "OTHER": "1"}
    assert Settings.unknown_variables(env) == ["LLNM_ALLOWED_AE", "LLNM_DESTINATION"]
    monkeypatch.setenv("LLNM_ALLOWED_AE", "PACS")
    caplog.set_level(logging.WARNING, logger="llnm")
    warned = warn_about_settings(_settings(tmp_path), receives=True)
    assert "LLNM_ALLOWED_AE" in warned and "LLNM_ALLOWED_AES" in warned  # the misspelling, and an empty allow-list
    text = caplog.text
    assert "unknown setting" in text and "ANY calling AE" in text
    assert warn_about_settings(_settings(tmp_path, allowed_aes="PACS"), receives=True) == ["LLNM_ALLOWED_AE"]
    assert "LLNM_ALLOWED_AES" not in warn_about_settings(_settings(tmp_path), receives=False)


# -- TLS rotation ------------------------------------------------------------------------------------------
def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _served_subject(port: int) -> str:
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                         capture_output=True, check=True)
    return out.stdout.decode()


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make certificates")
def test_rotated_certificate_is_served_without_a_restart(tmp_path):
    """As a Kubernetes Secret volume updates: the files behind a `..data` symlink are swapped at once."""
    from llnm.dimse import ReloadingTLSContext, server_tls_context
    from llnm.listener.app import Listener

    mount = tmp_path / "tls"
    _certificate(mount / "v1", "first")
    _certificate(mount / "v2", "second")
    (mount / "..data").symlink_to("v1")
    for name in ("tls.crt", "tls.key"):
        (mount / name).symlink_to(f"..data/{name}")
    cert, key = str(mount / "tls.crt"), str(mount / "tls.key")

    reloading = ReloadingTLSContext(lambda: server_tls_context(cert, key), cert, key)
    first = reloading.current()
    assert reloading.current() is first  # unchanged files: the same context
    listener = Listener(_settings(tmp_path, tls_cert=cert, tls_key=key), lambda uid: None).start()
    try:
        assert "first" in _served_subject(listener.port)
        (mount / "..data.tmp").symlink_to("v2")
        (mount / "..data.tmp").rename(mount / "..data")  # the kubelet's atomic swap
        assert reloading.current() is not first
        listener._server.ssl_context = listener._tls.current()  # what the listener's sweep loop does each pass
        assert "second" in _served_subject(listener.port)
    finally:
        listener.stop()


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make certificates")
def test_half_replaced_certificate_keeps_the_previous_context(tmp_path):
    from llnm.dimse import ReloadingTLSContext, server_tls_context

    cert, key = _certificate(tmp_path / "a", "first")
    reloading = ReloadingTLSContext(lambda: server_tls_context(str(cert), str(key)), str(cert), str(key))
    first = reloading.current()
    key.write_text("not a key\n")
    assert reloading.current() is first


# -- llnm smoke-test (the helm test hook) ------------------------------------------------------------------
class _NoBackend:
    def infer(self, model, inputs):
        raise AssertionError("the stand-in pipeline runs no model")

    def has_model(self, model):
        return True

    def model_version(self, model):
        return "none"


def _smoke(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv" / "bin" / "llnm"), "smoke-test", *args], capture_output=True,
                          text=True, timeout=120)


def test_smoke_test_passes_against_a_running_listener_and_worker(tmp_path):
    from llnm.audit import AuditTrail
    from llnm.listener.app import Listener
    from llnm.worker.local import LocalQueue
    from llnm.worker.process import StudyWorker

    settings = _settings(tmp_path, allowed_aes="LLNMTEST", results_dir=str(tmp_path / "results"))
    audit = AuditTrail.for_data_dir(settings.data_dir)
    worker = StudyWorker(settings, _NoBackend(), audit, predict=standin_predict, write_output=standin_write_output)
    queue = LocalQueue(worker, poll_s=0.05).start()
    listener = Listener(settings, queue.enqueue, audit=audit, completion_interval_s=0.05).start()
    health = HealthServer(0, host="127.0.0.1").start()
    try:
        metrics_url = f"http://127.0.0.1:{health.port}"
        run = _smoke(["--to", f"LLNM@127.0.0.1:{listener.port}", "--metrics", metrics_url, "--timeout", "60"])
        assert run.returncode == 0, run.stdout + run.stderr
        assert "C-ECHO" in run.stdout and "ok: a worker processed" in run.stdout
        studies = [s["study_uid"] for s in audit.studies()]
        assert len(studies) == 1 and audit.study(studies[0])["calling_ae"] == "LLNMTEST"
        # a calling AE the allow-list does not hold: rejected at the C-ECHO, with the fix in the message
        run = _smoke(["--to", f"LLNM@127.0.0.1:{listener.port}", "--aet", "STRANGER", "--metrics", metrics_url])
        assert run.returncode == 1 and "LLNM_ALLOWED_AES" in run.stderr
    finally:
        health.stop()
        listener.stop()
        queue.stop()


def test_smoke_test_fails_when_nothing_is_processed(tmp_path):
    from llnm.listener.app import Listener

    listener = Listener(_settings(tmp_path), lambda uid: None, completion_interval_s=0.05).start()
    health = HealthServer(0, host="127.0.0.1").start()
    try:
        run = _smoke(["--to", f"LLNM@127.0.0.1:{listener.port}", "--metrics", f"http://127.0.0.1:{health.port}",
                      "--timeout", "3"])
        assert run.returncode == 1 and "no study processed within 3 s" in run.stderr
        run = _smoke(["--to", f"LLNM@127.0.0.1:{listener.port}", "--metrics", f"http://127.0.0.1:{free_port()}"])
        assert run.returncode == 1 and "metrics cannot be read" in run.stderr
    finally:
        health.stop()
        listener.stop()
