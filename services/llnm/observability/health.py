"""One small HTTP server per service: `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz`
(readiness). The deploy files probe these exact paths on `LLNM_METRICS_PORT`.

- `/healthz` answers 200 while every registered `Heartbeat` is fresh, 503 (naming the silent loop) once
  one has not beaten for its `max_age_s`. The listener registers its accept loop and its completion
  loop: a process that still answers HTTP but whose DICOM receiver died or hung is restarted by the
  liveness probe, not left accepting nothing. A service without heartbeats answers 200 while it runs.
- `/readyz` answers 200 while every `checks` entry passes; `advisory` checks are run and reported in
  the JSON body but never make the service unready. The listener's broker check is advisory: on a
  Redis blip it still spools (and queues the study later), so its pod must stay in the DICOM Service.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llnm.observability import metrics
from llnm.observability.logs import get_logger

log = get_logger(__name__)

#: A readiness check: returns (ok, short detail without patient data).
Check = Callable[[], tuple[bool, str]]


class Heartbeat:
    """The pulse of one long-running loop: the loop calls `beat()` each pass; it is alive while the last
    beat is younger than `max_age_s` (a thread that died or hangs stops beating)."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = float(max_age_s)
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()

    def age(self) -> float:
        return self.clock() - self.last

    def alive(self) -> bool:
        return self.age() <= self.max_age_s


class HealthServer:
    def __init__(self, port: int, checks: dict[str, Check] | None = None, host: str = "0.0.0.0",
                 on_scrape: Callable[[], None] | None = None, advisory: dict[str, Check] | None = None,
                 heartbeats: dict[str, Heartbeat] | None = None) -> None:
        self.checks = dict(checks or {})
        self.advisory = dict(advisory or {})
        self.heartbeats = dict(heartbeats or {})
        self.on_scrape = on_scrape
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="llnm-health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("metrics and health endpoints up", port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def liveness(self) -> tuple[bool, dict[str, str]]:
        """Every heartbeat fresh? With the age of each (seconds since its loop last beat)."""
        results = {name: ("ok" if hb.alive() else "FAIL") + f": {hb.age():.0f} s since the last pass"
                   for name, hb in self.heartbeats.items()}
        return all(hb.alive() for hb in self.heartbeats.values()), results

    def readiness(self) -> tuple[bool, dict[str, str]]:
        return _run_checks(self.checks)

    def advice(self) -> dict[str, str]:
        """The advisory checks' results (reported by /readyz, never deciding it)."""
        return _run_checks(self.advisory)[1]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                if path == "/metrics":
                    if outer.on_scrape:
                        try:
                            outer.on_scrape()
                        except Exception:
                            log.warning("metrics refresh failed")
                    self._send(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    alive, beats = outer.liveness()
                    if alive:
                        self._send(200, b"ok\n", "text/plain")
                    else:
                        stale = "".join(f"{name}: {state}\n" for name, state in beats.items())
                        log.error("liveness failing: a loop stopped", reason=stale.strip().replace("\n", "; "))
                        self._send(503, stale.encode(), "text/plain")
                elif path == "/readyz":
                    ok, results = outer.readiness()
                    answer: dict[str, object] = {"ready": ok, "checks": results}
                    if outer.advisory:
                        answer["advisory"] = outer.advice()
                    if outer.heartbeats:
                        answer["loops"] = outer.liveness()[1]
                    body = json.dumps(answer).encode() + b"\n"
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # scrapes every few seconds would flood the logs

        return Handler


def _run_checks(checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
    results: dict[str, str] = {}
    ok = True
    for name, check in checks.items():
        try:
            passed, detail = check()
        except Exception as exc:  # a failing check is a not-ready answer, never a crash
            passed, detail = False, type(exc).__name__
        ok = ok and passed
        results[name] = ("ok" if passed else "FAIL") + (f": {detail}" if detail else "")
    return ok, results


def writable_dir_check(path: Path) -> Check:
    def check() -> tuple[bool, str]:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ready-"):
            pass
        return True, ""

    return check


def disk_check(path: Path, min_free_mb: int) -> Check:
    def check() -> tuple[bool, str]:
        free_mb = shutil.disk_usage(path).free // (1024 * 1024)
        return free_mb >= min_free_mb, f"{free_mb} MB free"

    return check


def broker_check(broker_url: str) -> Check:
    def check() -> tuple[bool, str]:
        import redis

        client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return True, ""

    return check


def models_check(backend: object, models: tuple[str, ...]) -> Check:
    def check() -> tuple[bool, str]:
        missing = [m for m in models if not backend.has_model(m)]  # type: ignore[attr-defined]
        return not missing, ("missing: " + ", ".join(missing)) if missing else ""

    return check
