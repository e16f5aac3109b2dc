"""The console's pages and API over a real audit database: authentication, roles, CSRF, no patient data
for the roles that must not see it, the study list's filters and keyset paging, and each operator action
changing the study's state and its audit trail with who did it."""

from __future__ import annotations

import json
import re

import pytest
from console_support import PASSWORD, csrf_of, make_client, spool_instance
from support import PATIENT_ID, PATIENT_NAME

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.console.auth import Users
from llnm.listener.access import parse_access
from llnm.listener.completion import CompletionTracker
from llnm.worker.destinations import parse_destinations
from llnm.storage.outbox import Outbox


def test_no_login_no_data(client_for, seeded):
    client = client_for(None)
    for path in ("/", "/studies", f"/studies/{seeded.uids['done']}", "/health", "/quality"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/login", path
    for path in ("/api/studies", f"/api/studies/{seeded.uids['done']}", "/api/health", "/api/quality",
                 "/api/session"):
        assert client.get(path).status_code == 401, path
    answer = client.post(f"/api/studies/{seeded.uids['failed']}/actions/requeue", json={})
    assert answer.status_code == 401
    assert seeded.audit.study(seeded.uids["failed"])["state"] == A.FAILED
    login = client.get("/login")
    assert seeded.uids["done"] not in login.text and "Doe" not in login.text


def test_wrong_password_is_refused_and_logs_nothing_secret(client_for, seeded, capfd):
    client = client_for(None)
    page = client.get("/login")
    answer = client.post("/login", data={"username": "operator1", "password": "wrong", "csrf": csrf_of(page.text)})
    assert answer.status_code == 401 and "Wrong user name or password" in answer.text
    assert client.get("/api/studies").status_code == 401
    assert client.post("/api/login", json={"username": "nobody", "password": PASSWORD}).status_code == 401
    assert "wrong" not in capfd.readouterr().err.replace("wrong user name or password", "")


def test_repeated_failed_logins_lock_that_user_without_checking_passwords(client_for, seeded):
    """Five wrong passwords for one user lock its login for minutes (429, the right password refused too,
    no argon2 check spent); another user is not locked; the lock ends after its time."""
    from llnm.console.auth import LoginThrottle

    client = client_for(None)
    now = [1000.0]
    con_throttle = LoginThrottle(clock=lambda: now[0])
    client.app.state.console.throttle = con_throttle
    for _ in range(5):
        assert client.post("/api/login", json={"username": "operator1", "password": "wrong"}).status_code == 401
    locked = client.post("/api/login", json={"username": "operator1", "password": PASSWORD})
    assert locked.status_code == 429 and "try again in 5 minute" in locked.json()["error"]
    page = client.get("/login")
    form = client.post("/login", data={"username": "operator1", "password": PASSWORD, "csrf": csrf_of(page.text)})
    assert form.status_code == 429 and 'id="login-locked"' in form.text
    assert client.post("/api/login", json={"username": "viewer1", "password": PASSWORD}).status_code == 200
    now[0] += 301
    assert client.post("/api/login", json={"username": "operator1", "password": PASSWORD}).status_code == 200


def test_one_client_guessing_many_user_names_is_locked_too():
    from llnm.console.auth import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for k in range(20):
        assert throttle.retry_after(f"user{k}", "10.0.0.9") == 0
        throttle.failed(f"user{k}", "10.0.0.9")
    assert throttle.retry_after("someone-else", "10.0.0.9") == pytest.approx(300)
    assert throttle.retry_after("someone-else", "10.0.0.10") == 0
    now[0] += 700  # failures older than the window do not add up
    throttle.failed("user0", "10.0.0.10")
    assert throttle.retry_after("user0", "10.0.0.10") == 0


def test_login_form_needs_its_csrf_token(client_for):
    client = client_for(None)
    client.get("/login")
    answer = client.post("/login", data={"username": "operator1", "password": PASSWORD})
    assert answer.status_code == 403
    assert client.get("/api/studies").status_code == 401


def test_list_shows_every_state_with_its_columns(client_for, seeded):
    page = client_for("viewer").get("/studies")
    assert page.status_code == 200
    for state, uid in seeded.uids.items():
        row = re.search(rf'<tr class="state-{state}" data-uid="{re.escape(uid)}">(.*?)</tr>', page.text, re.S)
        assert row, state
    done = re.search(rf'data-uid="{re.escape(seeded.uids["done"])}">(.*?)</tr>', page.text, re.S).group(1)
    assert "0.710" in done and "high" in done and "MODALITY" in done or "PACS" in done
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_filters_and_keyset_paging(client_for, seeded):
    for i in range(130):
        seeded.audit.set_state(f"1.2.826.0.1.3680043.10.544.{i}", A.DONE, calling_ae="BULK",
                               probability=0.1, risk_level=1 + i % 3)
    client = client_for("viewer")
    failed = client.get("/api/studies", params={"state": "failed"}).json()
    assert [r["study_uid"] for r in failed["studies"]] == [seeded.uids["failed"]] and failed["next"] is None
    seen, cursor = [], None
    while True:
        params = {"ae": "BULK", "limit": "50", **({"after": cursor} if cursor else {})}
        page = client.get("/api/studies", params=params).json()
        seen += [r["study_uid"] for r in page["studies"]]
        cursor = page["next"]
        if not cursor:
            break
    assert len(seen) == 130 and len(set(seen)) == 130
    highs = client.get("/api/studies", params={"ae": "BULK", "risk": "3", "limit": "200"}).json()["studies"]
    assert len(highs) == 43 and all(r["risk_level"] == 3 for r in highs)
    html = client.get("/studies", params={"ae": "BULK", "limit": "50"}).text
    assert 'id="next-page"' in html
    assert client.get("/api/studies", params={"after": "x_../../etc"}).status_code == 400


def test_the_list_uses_the_keyset_indexes(seeded):
    plans = {
        "": (),
        "WHERE state = ?": ("done",),
        "WHERE calling_ae = ?": ("PACS",),
    }
    for where, params in plans.items():
        rows = seeded.audit.read(f"EXPLAIN QUERY PLAN SELECT * FROM studies {where} "
                                 "ORDER BY updated_at DESC, study_uid DESC LIMIT 50", params)
        plan = " ".join(r["detail"] for r in rows)
        assert "USING INDEX studies_" in plan and "TEMP B-TREE" not in plan, (where, plan)


@pytest.mark.parametrize("role", ["viewer", "radiologist"])
def test_roles_that_may_not_act_cannot(client_for, seeded, role):
    client = client_for(role)
    csrf = client.get("/api/session").json()["csrf"]
    page = client.get(f"/studies/{seeded.uids['failed']}").text
    assert 'id="requeue"' not in page and 'id="discard"' not in page
    for action in ("requeue", "discard", "complete", "resend"):
        answer = client.post(f"/api/studies/{seeded.uids['failed']}/actions/{action}", json={},
                             headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 403, action
    assert seeded.audit.study(seeded.uids["failed"])["state"] == A.FAILED
    assert not [e for e in seeded.audit.events(seeded.uids["failed"]) if e["event"].startswith("console")]


def test_viewer_and_operator_cannot_record_feedback(client_for, seeded):
    for role in ("viewer", "operator"):
        client = client_for(role)
        csrf = client.get("/api/session").json()["csrf"]
        answer = client.post(f"/api/studies/{seeded.uids['done']}/outcome", json={"llnm": True},
                             headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 403
    assert seeded.audit.outcome(seeded.uids["done"]) is None


def test_actions_need_the_csrf_token(client_for, seeded):
    client = client_for("operator")
    uid = seeded.uids["failed"]
    assert client.post(f"/studies/{uid}/actions/requeue", data={}).status_code == 403
    assert client.post(f"/studies/{uid}/actions/requeue", data={"csrf": "forged"}).status_code == 403
    assert client.post(f"/api/studies/{uid}/actions/requeue", json={}).status_code == 403
    assert seeded.audit.study(uid)["state"] == A.FAILED


def test_requeue_from_the_page_queues_and_records_who(client_for, seeded):
    client = client_for("operator")
    uid = seeded.uids["failed"]
    page = client.get(f"/studies/{uid}")
    assert 'id="requeue"' in page.text
    answer = client.post(f"/studies/{uid}/actions/requeue", data={"csrf": csrf_of(page.text)})
    assert answer.status_code == 200 and "queued again" in answer.text
    assert seeded.audit.study(uid)["state"] == A.QUEUED
    action = [e for e in seeded.audit.events(uid) if e["event"] == "console: requeue"]
    assert action and action[-1]["by"] == "operator1" and action[-1]["role"] == "operator" and action[-1]["ok"]
    assert "console: requeue" in answer.text and "operator1" in answer.text


def test_force_completion_queues_a_waiting_study_at_the_next_pass(client_for, seeded):
    tracker = CompletionTracker(seeded.audit, parse_access("", 10.0, 30.0), clock=lambda: 1000.0)
    uid = "1.2.826.0.1.3680043.10.545.1"
    tracker.instance_received(uid, f"{uid}.1", "MODALITY", "image", sop_uid=f"{uid}.1.1")
    assert tracker.poll(lambda u: None) == []  # timers not run out
    client = client_for("operator")
    csrf = client.get("/api/session").json()["csrf"]
    answer = client.post(f"/api/studies/{uid}/actions/complete", json={}, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200 and answer.json()["ok"]
    assert tracker.poll(lambda u: "task-1") == [uid]
    assert seeded.audit.study(uid)["state"] == A.QUEUED
    events = [e["event"] for e in seeded.audit.events(uid)]
    assert events.index("console: force completion") < events.index("queued")
    again = client.post(f"/api/studies/{uid}/actions/complete", json={}, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409


def test_discard_stops_the_study_and_removes_its_files(client_for, seeded):
    uid = seeded.uids["queued"]
    client = client_for("operator")
    csrf = client.get("/api/session").json()["csrf"]
    answer = client.post(f"/api/studies/{uid}/actions/discard", json={}, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200
    assert seeded.audit.study(uid)["state"] == A.IGNORED
    assert not (seeded.settings.spool_dir / uid).exists()
    assert seeded.audit.claim_due(A.QUEUED, A.PROCESSING) is None
    trail = [e for e in seeded.audit.events(uid) if e["event"] == "console: discard"]
    assert trail[0]["by"] == "operator1" and trail[0]["from"] == "queued"
    busy = client.post(f"/api/studies/{seeded.uids['processing']}/actions/discard", json={},
                       headers={"X-CSRF-Token": csrf})
    assert busy.status_code == 409 and seeded.audit.study(seeded.uids["processing"])["state"] == A.PROCESSING


def test_resend_forgets_one_destination_and_delivers_again(seeded, tmp_path):
    from dataclasses import replace

    from pydicom import dcmread

    settings = replace(seeded.settings, destinations="PACS@127.0.0.1:104,ARCHIVE@127.0.0.1:105")
    uid = seeded.uids["done"]
    pacs, archive = parse_destinations(settings.destinations)
    outbox = Outbox(settings.outbox_dir)
    ds = dcmread(spool_instance(settings, uid))
    outbox.add(uid, [ds], [pacs, archive], "key")
    for node in (pacs, archive):
        outbox.mark_sent(uid, node, ds.SOPInstanceUID)
        seeded.audit.event(uid, "sent", destination=node.label, objects=1)
    client = make_client(settings, seeded.audit, "admin")
    page = client.get(f"/studies/{uid}").text
    assert page.count('class="resend"') == 2
    answer = client.post(f"/studies/{uid}/actions/resend", data={"csrf": csrf_of(page), "destination": pacs.label})
    assert "delivery queued" in answer.text
    assert [p.stem for p in outbox.pending(uid, pacs)] == [ds.SOPInstanceUID] and outbox.pending(uid, archive) == []
    row = seeded.audit.study(uid)
    assert row["state"] == A.SENDING and row["next_at"] == 0
    due = {seeded.audit.claim_due(A.SENDING, A.SENDING, lease_s=60)["study_uid"] for _ in range(2)}
    assert uid in due  # the embedded queue delivers it (beside the seeded sending study)
    action = [e for e in seeded.audit.events(uid) if e["event"] == "console: re-send"][-1]
    assert action == {**action, "by": "admin1", "destination": pacs.label, "ok": True}
    wrong = client.post(f"/studies/{uid}/actions/resend", data={"csrf": csrf_of(page), "destination": "EVIL@1.2.3.4:1"})
    assert "not a configured destination" in wrong.text


def _write_key_image(settings, uid: str) -> str:
    import numpy as np
    from pydicom.uid import generate_uid

    from support import make_us

    ds = make_us(uid, generate_uid(), size=64)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.PixelData = np.full((64, 64), 200, np.uint8).tobytes()
    folder = settings.results_path / uid
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return f"{ds.SOPInstanceUID}.dcm"


def test_patient_data_and_key_images_only_for_the_roles_allowed(client_for, seeded):
    uid = seeded.uids["done"]
    name = _write_key_image(seeded.settings, uid)
    seeded.audit.put_result(uid, {"probability": 0.71, "risk_label": "high", "warnings": ["a warning"],
                                  "objects": [{"type": "SC", "file": name}],
                                  "algorithm": {"models": {"tmdl": "abc123"}}}, "Scanner X")
    for role in ("viewer", "operator"):
        client = client_for(role)
        for path in (f"/studies/{uid}", f"/api/studies/{uid}", "/studies", "/health", "/quality"):
            text = client.get(path).text
            assert "Doe" not in text and PATIENT_ID not in text and "19700101" not in text, (role, path)
        page = client.get(f"/studies/{uid}").text
        assert "a warning" in page and "abc123" in page and "key-image" not in page
        assert client.get(f"/studies/{uid}/key-image/0.png").status_code == 403
    client = client_for("radiologist")
    page = client.get(f"/studies/{uid}").text
    assert PATIENT_NAME in page and PATIENT_ID in page and "19700101" in page
    image = client.get(f"/studies/{uid}/key-image/0.png")
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/studies/{uid}/key-image/1.png").status_code == 404


def test_a_removed_user_or_changed_role_ends_the_session(seeded):
    client = make_client(seeded.settings, seeded.audit, "operator")
    assert client.get("/api/session").json()["role"] == "operator"
    Users(seeded.settings.console_users_path).add("operator1", "viewer", PASSWORD)
    assert client.get("/api/session").status_code == 401


def test_unknown_uid_and_bad_uid(client_for):
    client = client_for("viewer")
    assert client.get("/studies/1.2.3.999").status_code == 404
    assert client.get("/studies/..%2Fetc").status_code == 404


def test_health_shows_queue_checks_disk_and_errors(seeded):
    from llnm.console.app import create_app
    from starlette.testclient import TestClient

    client = TestClient(create_app(seeded.settings, seeded.audit,
                                   checks={"workers": lambda: (True, "1 of 1 threads alive"),
                                           "Triton": lambda: (False, "missing: tmdl")}))
    page = client.get("/login")
    client.post("/login", data={"username": "viewer1", "password": PASSWORD, "csrf": csrf_of(page.text)})
    h = client.get("/api/health").json()
    assert h["queue_depth"] == 1 and h["checks"]["Triton"] == {"ok": False, "text": "missing: tmdl"}
    assert h["errors"][0]["study_uid"] == seeded.uids["failed"] and "PermanentError" in h["errors"][0]["error"]
    html = client.get("/health").text
    assert "DOWN: missing: tmdl" in html and 'id="queue-depth">1<' in html


def test_logout_needs_csrf_and_ends_the_session(client_for):
    client = client_for("viewer")
    assert client.post("/logout", data={}).status_code == 403
    csrf = client.get("/api/session").json()["csrf"]
    client.post("/logout", data={"csrf": csrf})
    assert client.get("/api/session").status_code == 401


def test_audit_keeps_existing_behaviour_for_old_databases(tmp_path):
    """A database made before the console tables gets them (and the list indexes) on open."""
    import sqlite3

    path = tmp_path / "llnm.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE studies (study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, calling_ae TEXT,"
                       " instances INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
                       " send_attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, task_id TEXT,"
                       " error TEXT, probability REAL, risk_level INTEGER, created_at REAL NOT NULL,"
                       " updated_at REAL NOT NULL);"
                       "INSERT INTO studies VALUES ('1.2.3', 'done', 'AE', 1, 1, 0, 0, NULL, NULL, 0.5, 2, 1, 2);")
    conn.close()
    audit = AuditTrail(path)
    assert audit.page()[0]["study_uid"] == "1.2.3"
    audit.set_outcome("1.2.3", "rad", True, 3)
    assert audit.outcomes()[0]["probability"] == 0.5


def test_pages_escape_what_the_database_holds(client_for, seeded):
    uid = seeded.uids["failed"]
    seeded.audit.set_state(uid, A.FAILED, event="dead letter", detail={"error": "<script>alert(1)</script>"},
                           error="<script>alert(1)</script>")
    client = client_for("viewer")
    for path in ("/studies", f"/studies/{uid}", "/health"):
        text = client.get(path).text
        assert "<script>alert" not in text and "&lt;script&gt;" in text, path


def test_malformed_json_is_a_400_not_a_crash(client_for, seeded):
    client = client_for("radiologist")
    csrf = client.get("/api/session").json()["csrf"]
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    path = f"/api/studies/{seeded.uids['done']}/outcome"
    assert client.post(path, content=b"{not json", headers=headers).status_code == 400
    assert client.post(path, content=b"[1]", headers=headers).status_code == 400
    assert client.post("/api/login", content=b"[]", headers={"Content-Type": "application/json"}).status_code == 400


def test_a_broken_users_file_lets_nobody_in(seeded):
    client = make_client(seeded.settings, seeded.audit, "viewer")
    path = seeded.settings.console_users_path
    path.write_text(path.read_text() + "intruder superuser $argon2id$x\n")
    assert client.get("/api/session").status_code == 401
    again = make_client(seeded.settings, seeded.audit, None)
    assert again.post("/api/login", json={"username": "viewer1", "password": PASSWORD}).status_code == 401


def test_an_empty_or_short_key_file_is_replaced_and_never_signs_a_session(seeded):
    """An empty or cut-short <data_dir>/console-secret (a write stopped by a full disk or a kill) is not a
    signing key: anyone could sign a session with it. A new random key replaces it, kept 0600."""
    import base64
    import json
    import time

    import itsdangerous
    from starlette.testclient import TestClient

    from llnm.console.app import create_app
    from llnm.console.auth import secret_key

    data_dir = seeded.settings.data_dir
    path = data_dir / "console-secret"
    for broken in ("", " \n", "short"):
        path.write_text(broken)
        key = secret_key("", data_dir)
        assert len(key) >= 32 and path.read_text() == key, repr(broken)
        assert path.stat().st_mode & 0o777 == 0o600
        assert secret_key("", data_dir) == key  # kept: every process on the volume agrees
    path.write_text("")
    session = {"user": "admin1", "role": "admin", "csrf": "x", "expires": time.time() + 3600, "source": "users-file"}
    forged = itsdangerous.TimestampSigner("").sign(base64.b64encode(json.dumps(session).encode())).decode()
    client = TestClient(create_app(seeded.settings, seeded.audit), base_url="http://console.test",
                        cookies={"llnm_console": forged})
    assert client.get("/api/session").status_code == 401
    assert client.post(f"/api/studies/{seeded.uids['failed']}/actions/discard", json={},
                       headers={"X-CSRF-Token": "x"}).status_code == 401
    assert seeded.audit.study(seeded.uids["failed"])["state"] == A.FAILED
    assert make_client(seeded.settings, seeded.audit, "admin").get("/api/session").status_code == 200


def test_a_short_configured_secret_key_is_refused_at_start(seeded):
    from dataclasses import replace

    from llnm.console.app import create_app

    for weak in ("changeme", " " * 40, "x" * 31):
        with pytest.raises(ValueError, match="LLNM_CONSOLE_SECRET_KEY has fewer than 32 characters"):
            create_app(replace(seeded.settings, console_secret_key=weak), seeded.audit)
    create_app(replace(seeded.settings, console_secret_key="k" * 32), seeded.audit)


def test_oversized_bodies_are_refused_before_they_are_read(client_for, seeded):
    """Login (JSON and form) and the other JSON/form endpoints cap their bodies (64 KiB; feedback 1 MiB, for
    an outline of 2000 points): a larger one is a 413, from its Content-Length or while streamed, and the
    normal requests still work."""
    MAX_BODY_BYTES, MAX_FEEDBACK_BYTES = 64 * 1024, 1024 * 1024  # llnm.console.app's caps
    client = client_for(None)
    big = b'{"username": "viewer1", "password": "' + b"A" * MAX_BODY_BYTES + b'"}'
    json_headers = {"Content-Type": "application/json"}
    assert client.post("/api/login", content=big, headers=json_headers).status_code == 413

    def chunked():  # no Content-Length: refused while streaming
        yield b'{"username": "viewer1", "password": "'
        for _ in range(4):
            yield b"A" * (MAX_BODY_BYTES // 2)
        yield b'"}'

    assert client.post("/api/login", content=chunked(), headers=json_headers).status_code == 413
    page = client.get("/login")
    answer = client.post("/login", data={"username": "viewer1", "password": "A" * MAX_BODY_BYTES,
                                         "csrf": csrf_of(page.text)})
    assert answer.status_code == 413
    assert client.get("/api/session").status_code == 401
    login = client.post("/api/login", json={"username": "radiologist1", "password": PASSWORD})
    assert login.status_code == 200
    headers = {"X-CSRF-Token": login.json()["csrf"]}
    uid = seeded.uids["done"]
    padded = {"llnm": True, "note": "x" * MAX_BODY_BYTES}
    assert client.post(f"/api/studies/{uid}/outcome", json=padded, headers=headers).status_code == 413
    assert client.post(f"/api/studies/{uid}/outcome", json={"llnm": True}, headers=headers).status_code == 200
    points = [[123.45678901234567 + i / 7, 456.7890123456789 + i / 3] for i in range(2000)]
    outline = {"sop_instance_uid": "1.2.3", "frame": 1, "points": points}
    assert client.post(f"/api/studies/{uid}/feedback", json={"outline": outline}, headers=headers).status_code == 200
    form = client.post(f"/studies/{uid}/feedback", data={"outline": json.dumps(outline), "csrf": headers["X-CSRF-Token"]},
                       follow_redirects=False)
    assert form.status_code == 303
    huge = {"outline": {**outline, "points": points * 14}}
    assert len(json.dumps(huge)) > MAX_FEEDBACK_BYTES
    assert client.post(f"/api/studies/{uid}/feedback", json=huge, headers=headers).status_code == 413


def test_console_log_lines_say_who_did_what(client_for, seeded, caplog):
    """docs/operations.md: the console's logs carry UIDs, user names and actions (the allow-list of log
    fields dropped user, role, action and ok)."""
    from llnm.observability.logs import JsonFormatter

    caplog.set_level("INFO", logger="llnm")
    client = client_for("operator")
    csrf = client.get("/api/session").json()["csrf"]
    uid = seeded.uids["failed"]
    assert client.post(f"/api/studies/{uid}/actions/requeue", json={}, headers={"X-CSRF-Token": csrf}).status_code == 200
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    login = next(line for line in lines if line["msg"] == "console login")
    assert login["user"] == "operator1" and login["role"] == "operator"
    action = next(line for line in lines if line["msg"] == "console action")
    assert action == {**action, "user": "operator1", "action": "requeue", "study_uid": uid, "ok": True}


def test_a_page_size_that_is_not_ascii_digits_is_the_default_not_a_crash(client_for, seeded):
    """str.isdigit() takes "²" (and int() then refused it: a 500); any limit not among the page sizes,
    in whatever script, gives the default page of 50."""
    for i in range(60):
        seeded.audit.set_state(f"1.2.826.0.1.3680043.10.546.{i}", A.DONE, calling_ae="BULK")
    client = client_for("viewer")
    for limit in ("²", "²⁵", "٢٥", "２５", "25x", "7"):
        for path in ("/api/studies", "/studies"):
            answer = client.get(path, params={"ae": "BULK", "limit": limit})
            assert answer.status_code == 200, (limit, path)
        assert len(client.get("/api/studies", params={"ae": "BULK", "limit": limit}).json()["studies"]) == 50
    assert len(client.get("/api/studies", params={"ae": "BULK", "limit": "25"}).json()["studies"]) == 25
