"""Running the console under uvicorn in a thread: beside the listener and the worker (`llnm serve`),
or alone (`llnm console`); the process's own signal handlers stop it. uvicorn's access log is off: our own logs carry UIDs and user
names only."""

from __future__ import annotations

import threading
from typing import Any

from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.console.app import Check, create_app
from llnm.observability.logs import get_logger

log = get_logger(__name__)


def register_metrics(audit: AuditTrail) -> None:
    """The feedback and outcome gauges (llnm.console.quality) on the service's Prometheus registry, once."""
    from llnm.console.quality import QualityCollector
    from llnm.observability.metrics import REGISTRY

    if not getattr(register_metrics, "done", False):
        REGISTRY.register(QualityCollector(audit))
        register_metrics.done = True  # type: ignore[attr-defined]


class ConsoleServer:
    def __init__(self, settings: Settings, audit: AuditTrail | None = None,
                 checks: dict[str, Check] | None = None, port: int | None = None) -> None:
        import uvicorn

        self.settings = settings
        self.audit = audit or AuditTrail.for_data_dir(settings.data_dir)
        self.app = create_app(settings, self.audit, checks)
        config = uvicorn.Config(self.app, host=settings.console_bind_address,
                                port=settings.console_port if port is None else port, access_log=False,
                                log_config=None, log_level="warning", server_header=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        servers: Any = getattr(self.server, "servers", None) or []
        for srv in servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return self.settings.console_port

    def start(self, timeout_s: float = 10.0) -> "ConsoleServer":
        """Serve in a daemon thread (uvicorn leaves signals to the main thread's service); returns once
        listening, raises OSError if it could not bind."""
        register_metrics(self.audit)
        self._thread = threading.Thread(target=self.server.run, name="llnm-console", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started and self._thread.is_alive() and waited < timeout_s:
            deadline.wait(0.05)
            waited += 0.05
        if not self.server.started:
            raise OSError(f"the console could not listen on {self.settings.console_bind_address}:"
                          f"{self.settings.console_port}")
        log.info("console up", port=self.port, address=self.settings.console_bind_address)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
