"""Fixtures of the console tests (helpers in console_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from console_support import Seeded, make_client, seed, write_users  # noqa: E402
from support import free_port  # noqa: E402

from llnm.audit import AuditTrail  # noqa: E402
from llnm.config import Settings  # noqa: E402


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Seeded]:
    """A data dir with studies in every state and one user per role."""
    settings = Settings(data_dir=tmp_path / "data", metrics_port=0, min_free_disk_mb=1, console_port=0,
                        port=free_port())
    audit = AuditTrail.for_data_dir(settings.data_dir)
    write_users(settings.console_users_path)
    yield Seeded(settings, audit, seed(settings, audit))
    audit.close()


@pytest.fixture
def client_for(seeded: Seeded):
    """client_for(role or None) -> a TestClient logged in as that role's user."""
    return lambda role: make_client(seeded.settings, seeded.audit, role)
