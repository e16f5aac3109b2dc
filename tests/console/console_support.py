"""What the console tests share: a seeded audit database with studies in every state, users of every role
(fast argon2 hashes), and a Starlette TestClient logged in through the login form."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from support import make_us  # noqa: E402

from llnm import audit as A  # noqa: E402
from llnm.audit import AuditTrail  # noqa: E402
from llnm.config import Settings  # noqa: E402

PASSWORD = "correct horse battery"
ROLES = ("viewer", "operator", "radiologist", "admin")


@dataclass
class Seeded:
    settings: Settings
    audit: AuditTrail
    uids: dict[str, str]  # state -> study UID


def spool_instance(settings: Settings, study_uid: str, **kwargs) -> Path:
    """One real DICOM instance (with patient data in its header) in the study's spool folder."""
    ds = make_us(study_uid, f"{study_uid}.1", **kwargs)
    path = settings.spool_dir / study_uid / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def seed(settings: Settings, audit: AuditTrail) -> dict[str, str]:
    """One study per state, as the listener and the worker leave them."""
    uids = {}
    for n, state in enumerate(A.STATES, start=1):
        uid = f"1.2.826.0.1.3680043.10.543.{n}"
        fields = {"calling_ae": "MODALITY" if n % 2 else "PACS", "instances": 2}
        if state == A.DONE:
            fields.update(probability=0.71, risk_level=3)
        if state == A.FAILED:
            fields.update(error="PermanentError: the pipeline produced no result for this study")
        audit.set_state(uid, state, event="receiving", detail={"calling_ae": fields["calling_ae"]}, **fields)
        if state in (A.FAILED, A.DONE, A.QUEUED):
            spool_instance(settings, uid)
        uids[state] = uid
    audit.event(uids[A.FAILED], "dead letter", stage="process", attempts=1,
                error="PermanentError: the pipeline produced no result for this study")
    return uids


def write_users(path: Path) -> None:
    """One user per role; argon2id with small costs (the hash carries them) to keep the tests fast."""
    from argon2 import PasswordHasher

    fast = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{role}1 {role} {fast.hash(PASSWORD)}\n" for role in ROLES))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def make_client(settings: Settings, audit: AuditTrail, role: str | None):
    """A TestClient logged in (through the login form) as the user of that role, or not at all."""
    from starlette.testclient import TestClient

    from llnm.console.app import create_app

    client = TestClient(create_app(settings, audit), base_url="http://console.test")
    if role is not None:
        page = client.get("/login")
        answer = client.post("/login", data={"username": f"{role}1", "password": PASSWORD, "csrf": csrf_of(page.text)},
                             follow_redirects=False)
        assert answer.status_code == 303, answer.text
    return client
