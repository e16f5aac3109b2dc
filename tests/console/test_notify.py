"""Webhook notifications: a real HTTP receiver on loopback gets the result, failure and dead-letter events
it subscribed to, retried after failures; the payload carries no patient datum."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from support import PATIENT_ID, PATIENT_NAME, make_us

from llnm.notify import Notifier, WorkerHooks, parse_webhooks


class Receiver:
    """A loopback HTTP server that answers 500 to the first `fail_first` POSTs, then 204."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.tries = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.tries += 1
                if outer.tries <= fail_first:
                    self.send_response(500)
                else:
                    outer.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate, timeout_s: float = 10.0) -> bool:
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_parse_webhooks():
    hooks = parse_webhooks("https://a.example/x;events=dead_letter|failed, http://user:pw@b:8080/y")
    assert hooks[0].events == {"dead_letter", "failed"} and hooks[1].events == {"result", "failed", "dead_letter"}
    assert hooks[1].label == "http://b:8080"
    for bad in ("ftp://x", "https://x;events=everything", "https://x;retries=3"):
        with pytest.raises(ValueError):
            parse_webhooks(bad)


def test_result_is_kept_and_notified_after_retries_without_patient_data(seeded, tmp_path):
    receiver = Receiver(fail_first=2)
    try:
        settings = replace(seeded.settings, notify_webhooks=f"{receiver.url};events=result",
                           notify_backoff_s=0.05, notify_max_retries=3)
        hooks = WorkerHooks(settings, seeded.audit)
        uid = seeded.uids["done"]
        source = tmp_path / "one.dcm"
        make_us(uid, f"{uid}.1", manufacturer="Scanner").save_as(source, enforce_file_format=True)
        import pydicom

        ds = pydicom.dcmread(source)
        ds.ManufacturerModelName = "Model 7"
        ds.save_as(source)
        summary = {"probability": 0.61, "risk_level": 2, "finding": "nodule", "warnings": []}
        hooks.result(uid, [SimpleNamespace(summary=summary)], [source], "done")
        assert _wait(lambda: receiver.bodies)
        body = receiver.bodies[0]
        assert receiver.tries == 3 and body["event"] == "result" and body["study_uid"] == uid
        assert body["probability"] == 0.61 and body["state"] == "done"
        text = json.dumps(body)
        assert PATIENT_NAME not in text and PATIENT_ID not in text and "Doe" not in text
        kept = seeded.audit.result(uid)
        assert kept["summary"] == summary and kept["scanner_model"] == "Model 7"
        hooks.failure(uid, "process", "PermanentError: x", dead=True)  # not subscribed: nothing sent
        time.sleep(0.3)
        assert len(receiver.bodies) == 1
        hooks.notifier.stop()
    finally:
        receiver.close()


def test_a_webhook_that_never_answers_is_recorded_not_fatal(seeded):
    settings = replace(seeded.settings, notify_webhooks="http://127.0.0.1:9/never;events=dead_letter",
                       notify_backoff_s=0.01, notify_max_retries=2, notify_timeout_s=1.0)
    notifier = Notifier(settings, seeded.audit)
    uid = seeded.uids["failed"]
    assert notifier.notify("dead_letter", uid, state="failed", error="PermanentError: x") == 1
    assert _wait(lambda: any(e["event"] == "notification failed" for e in seeded.audit.events(uid)))
    event = [e for e in seeded.audit.events(uid) if e["event"] == "notification failed"][0]
    assert event["attempts"] == 3 and event["destination"] == "http://127.0.0.1:9"
    assert notifier.pending() == 0
    notifier.stop()


def test_email_through_a_real_smtp_server(seeded):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message as MessageHandler

    from support import free_port

    received = []

    class Keep(MessageHandler):
        def handle_message(self, message) -> None:
            received.append(message)

    controller = Controller(Keep(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = replace(seeded.settings,
                           notify_email="ops@hospital.test,pacs-admin@hospital.test;events=dead_letter",
                           notify_smtp_url=f"smtp://127.0.0.1:{controller.port}", notify_backoff_s=0.05)
        notifier = Notifier(settings, seeded.audit)
        uid = seeded.uids["failed"]
        assert notifier.notify("result", uid, state="done") == 0  # not subscribed
        assert notifier.notify("dead_letter", uid, state="failed", error="PermanentError: x") == 1
        assert _wait(lambda: received)
        message = received[0]
        assert message["To"] == "ops@hospital.test, pacs-admin@hospital.test"
        assert message["Subject"] == f"LLNM dead_letter: study {uid}"
        body = json.loads(message.get_payload())
        assert body["error"] == "PermanentError: x" and "Doe" not in message.as_string()
        notifier.stop()
    finally:
        controller.stop()
    for bad in (("nobody", "smtp://h"), ("a@b", "http://h")):
        with pytest.raises(ValueError):
            Notifier(replace(seeded.settings, notify_email=bad[0], notify_smtp_url=bad[1]))
