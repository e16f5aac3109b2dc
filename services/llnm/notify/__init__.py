"""What the worker tells the outside after each study: webhooks and e-mail, and the result kept for the
console.

`WorkerHooks` is called by llnm.worker.process at three points: a result (the summary and the scanner
model are kept in the audit database for the console, and `result` is notified), a transient failure that
will be retried (`failed`), and the dead letter (`dead_letter`).

Webhooks (`LLNM_NOTIFY_WEBHOOKS`, comma-separated `URL[;events=result|failed|dead_letter]`, all events by
default) get a JSON POST per event from a background thread, retried with doubling delays
(`LLNM_NOTIFY_BACKOFF_S`, `LLNM_NOTIFY_MAX_RETRIES` tries after the first); a notification that never
arrives is an audit event and a log line, never a failed study. The payload holds the event, the Study
Instance UID, the state, P(LLNM), the risk level and the audit-safe error text: no patient datum.
E-mail (`LLNM_NOTIFY_EMAIL`: addresses, `[;events=...]`, through `LLNM_NOTIFY_SMTP_URL` with smtplib) sends
the same payload as the message body, retried the same way.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llnm import __version__
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.observability.logs import get_logger

log = get_logger(__name__)

EVENTS = ("result", "failed", "dead_letter")


@dataclass(frozen=True)
class Webhook:
    url: str
    events: frozenset[str]

    @property
    def label(self) -> str:
        """The URL without credentials, query or path beyond the host (for logs and the audit trail)."""
        from urllib.parse import urlparse

        p = urlparse(self.url)
        return f"{p.scheme}://{p.hostname or ''}{f':{p.port}' if p.port else ''}"

    def deliver(self, payload: dict[str, Any], timeout_s: float) -> None:
        post_json(self.url, payload, timeout_s)


@dataclass(frozen=True)
class EmailTarget:
    """E-mail through an SMTP server (smtplib): `smtp://host[:25]`, `smtp+starttls://[user:password@]host[:587]`
    or `smtps://[user:password@]host[:465]`."""

    recipients: tuple[str, ...]
    smtp_url: str
    sender: str
    events: frozenset[str]

    @property
    def label(self) -> str:
        from urllib.parse import urlparse

        p = urlparse(self.smtp_url)
        return f"mailto:{len(self.recipients)} via {p.hostname or ''}{f':{p.port}' if p.port else ''}"

    def deliver(self, payload: dict[str, Any], timeout_s: float) -> None:
        import smtplib
        import ssl
        from email.message import EmailMessage
        from urllib.parse import unquote, urlparse

        p = urlparse(self.smtp_url)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = f"LLNM {payload['event']}: study {payload['study_uid']}"
        message.set_content(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        if p.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(p.hostname or "", p.port or 465, timeout=timeout_s,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(p.hostname or "", p.port or (587 if p.scheme == "smtp+starttls" else 25),
                                  timeout=timeout_s)
        with client:
            if p.scheme == "smtp+starttls":
                client.starttls(context=ssl.create_default_context())
            if p.username:
                client.login(unquote(p.username), unquote(p.password or ""))
            client.send_message(message)


def _events(options: list[str], setting: str) -> frozenset[str]:
    events = set(EVENTS)
    for option in options:
        key, _, value = option.partition("=")
        if key != "events" or not set(value.split("|")) <= set(EVENTS):
            raise ValueError(f"{setting}: unknown option (events= takes {'|'.join(EVENTS)})")
        events = set(value.split("|"))
    return frozenset(events)


def parse_email(text: str, smtp_url: str, sender: str) -> list[EmailTarget]:
    """`a@x,b@y[;events=...]` (one target; the options follow the last address)."""
    if not (text or "").strip():
        return []
    head, *options = [p.strip() for p in text.split(";")]
    recipients = tuple(a.strip() for a in head.split(",") if a.strip())
    if not recipients or not all("@" in a for a in recipients):
        raise ValueError("LLNM_NOTIFY_EMAIL: comma-separated e-mail addresses")
    if not smtp_url.startswith(("smtp://", "smtps://", "smtp+starttls://")):
        raise ValueError("LLNM_NOTIFY_SMTP_URL: smtp://, smtp+starttls:// or smtps://host[:port]")
    return [EmailTarget(recipients, smtp_url, sender, _events(options, "LLNM_NOTIFY_EMAIL"))]


def parse_webhooks(text: str) -> list[Webhook]:
    hooks = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        url, *options = [p.strip() for p in part.split(";")]
        if not url.startswith(("http://", "https://")):
            raise ValueError("LLNM_NOTIFY_WEBHOOKS: each entry is an http(s) URL")
        hooks.append(Webhook(url, _events(options, "LLNM_NOTIFY_WEBHOOKS")))
    return hooks


def post_json(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    """One POST; raises on anything but a 2xx answer."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": f"llnm/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 (configured http(s) URL)
        if not 200 <= answer.status < 300:
            raise urllib.error.HTTPError(url, answer.status, "not 2xx", answer.headers, None)


Target = Webhook | EmailTarget


class Notifier:
    """Delivers webhook and e-mail notifications from one background thread, with retries."""

    def __init__(self, settings: Settings, audit: AuditTrail | None = None) -> None:
        self.settings = settings
        self.hooks: list[Target] = [*parse_webhooks(settings.notify_webhooks),
                                    *parse_email(settings.notify_email, settings.notify_smtp_url,
                                                 settings.notify_email_from)]
        self.audit = audit
        self._heap: list[tuple[float, int, Target, dict[str, Any], int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def notify(self, event: str, study_uid: str, **fields: Any) -> int:
        """Queue the event for every webhook that wants it; returns how many."""
        payload = {"event": event, "study_uid": study_uid, "ts": time.time(), "service": "llnm",
                   "version": __version__, **fields}
        targets = [h for h in self.hooks if event in h.events]
        if not targets:
            return 0
        with self._cond:
            for hook in targets:
                heapq.heappush(self._heap, (time.monotonic(), next(self._order), hook, payload, 1))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llnm-notify", daemon=True)
                self._thread.start()
            self._cond.notify()
        return len(targets)

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._stop:
                    return
                _, _, hook, payload, attempt = heapq.heappop(self._heap)
            self._send(hook, payload, attempt)

    def _send(self, hook: Target, payload: dict[str, Any], attempt: int) -> None:
        try:
            hook.deliver(payload, self.settings.notify_timeout_s)
            log.info("notification sent", study_uid=payload["study_uid"], destination=hook.label,
                     reason=payload["event"], attempt=attempt)
            return
        except Exception as exc:  # any failure is retried, then recorded
            error = type(exc).__name__
        if attempt <= self.settings.notify_max_retries:
            delay = min(600.0, self.settings.notify_backoff_s * 2 ** (attempt - 1))
            log.warning("notification failed, will retry", study_uid=payload["study_uid"], destination=hook.label,
                        attempt=attempt, seconds=delay, error=error)
            with self._cond:
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), hook, payload, attempt + 1))
                self._cond.notify()
            return
        log.error("notification given up", study_uid=payload["study_uid"], destination=hook.label,
                  attempt=attempt, error=error)
        if self.audit is not None:
            self.audit.event(payload["study_uid"], "notification failed", destination=hook.label,
                             notification=payload["event"], attempts=attempt, error=error)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()


def scanner_model(paths: list[Path]) -> str | None:
    """ManufacturerModelName of the first readable instance (equipment, not patient data)."""
    import pydicom

    for path in paths[:3]:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ManufacturerModelName"])
        except Exception:  # an unreadable header: the model stays unknown
            continue
        value = str(ds.get("ManufacturerModelName", "") or "").strip()
        if value:
            return value[:64]
    return None


class WorkerHooks:
    """The worker's three calls (see the module docstring). Never raises into the worker."""

    def __init__(self, settings: Settings, audit: AuditTrail) -> None:
        self.audit = audit
        self.notifier = Notifier(settings, audit)

    def result(self, study_uid: str, outputs: list[Any], paths: list[Path], state: str) -> None:
        try:
            summaries = [o.summary for o in outputs if getattr(o, "summary", None)]
            if summaries:
                self.audit.put_result(study_uid, summaries[-1], scanner_model(paths))
            last = summaries[-1] if summaries else {}
            self.notifier.notify("result", study_uid, state=state, probability=last.get("probability"),
                                 risk_level=last.get("risk_level"), finding=last.get("finding"))
        except Exception:  # the result is already staged: a bookkeeping fault must not fail the study
            log.exception("result hook failed", study_uid=study_uid)

    def failure(self, study_uid: str, stage: str, error: str, dead: bool) -> None:
        try:
            self.notifier.notify("dead_letter" if dead else "failed", study_uid, state="failed" if dead else
                                 "retrying", stage=stage, error=error)
        except Exception:
            log.exception("failure hook failed", study_uid=study_uid)
