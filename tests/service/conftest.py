from __future__ import annotations

from pathlib import Path

import pytest
from support import free_port

from llnm.config import Settings


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings for one test: its own data dir and port, short timers, no metrics port."""

    def make(**overrides) -> Settings:
        values = dict(data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM", bind_address="127.0.0.1",
                      series_idle_s=0.5, study_idle_s=0.5, metrics_port=0, min_free_disk_mb=1,
                      network_timeout_s=10.0, send_backoff_s=0.2, task_retry_backoff_s=0.2)
        values.update(overrides)
        return Settings(**values)

    return make
