"""The audit trail's tables (studies, events, results, feedback, outcomes) have one writer: audit.py.
Other modules change them through `AuditTrail`, so a column's meaning lives in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import REPO_ROOT

TABLES = ("studies", "events", "results", "feedback", "outcomes")
WRITE = re.compile(r"\b(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+(" + "|".join(TABLES) + r")\b",
                   re.IGNORECASE)


def test_no_module_but_audit_py_writes_the_audit_tables():
    offenders = []
    for path in sorted((REPO_ROOT / "services" / "llnm").rglob("*.py")):
        if path.name == "audit.py" and path.parent.name == "llnm":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if WRITE.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_scan_finds_a_write_where_there_is_one():
    assert WRITE.search('c.execute("UPDATE studies SET next_at = 0 WHERE state = ?")')
    assert WRITE.search("INSERT OR IGNORE INTO events(study_uid) VALUES (?)")
    assert not WRITE.search("UPDATE pending_studies SET last_at = ?")


@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    t = AuditTrail(tmp_path / "audit.sqlite")
    yield t
    t.close()


def test_fields_counts_and_due_times_change_only_what_they_name(trail: AuditTrail):
    trail.set_state("1.2.3", A.RECEIVING)
    trail.set_state("1.2.4", A.SENDING, next_at=1e12)
    trail.set_state("1.2.5", A.QUEUED, next_at=1e12)
    before = trail.study("1.2.3")
    with trail.transaction() as c:
        AuditTrail.put_fields(c, "1.2.3", {"task_id": "t-1"})
        AuditTrail.count_instance(c, "1.2.3")
        AuditTrail.count_instance(c, "1.2.3")
    after = trail.study("1.2.3")
    assert after["task_id"] == "t-1" and after["instances"] == (before["instances"] or 0) + 2
    assert after["state"] == A.RECEIVING and after["updated_at"] == before["updated_at"]
    with pytest.raises(ValueError), trail.transaction() as c:
        AuditTrail.put_fields(c, "1.2.3", {"state": A.DONE})
    trail.due_now(A.SENDING)
    assert trail.study("1.2.4")["next_at"] == 0 and trail.study("1.2.5")["next_at"] == 1e12
