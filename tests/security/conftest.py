"""What the security tests share: a free loopback port and a real listener started on it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: importing llnm here, at conftest load, would apply
    from llnm.listener.app import Listener  # llnm.environment's warning filters too early for pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_listener(tmp_path: Path, **overrides: Any) -> Iterator["Listener"]:
    """A real listener on loopback (AE LLNM, long completion timers), stopped on exit."""
    from llnm.config import Settings
    from llnm.listener.app import Listener

    fields: dict[str, Any] = dict(data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM",
                                  bind_address="127.0.0.1", series_idle_s=30, study_idle_s=30, metrics_port=0,
                                  min_free_disk_mb=1, network_timeout_s=5)
    fields.update(overrides)
    running = Listener(Settings(**fields), lambda uid: "task", completion_interval_s=0.05).start()
    try:
        yield running
    finally:
        running.stop()
