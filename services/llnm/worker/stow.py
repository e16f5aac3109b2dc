"""STOW-RS (DICOMweb store) as a second way to deliver results, for PACS that prefer HTTP.

A destination `https://host/dicom-web` (credentials as `https://user:password@host/...` if needed) gets
one `POST {base}/studies` per call, `multipart/related; type="application/dicom"`, and its answer's
Referenced/Failed SOP Sequences say which objects were stored.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from llnm.worker.sender import SendReport, dicom_header

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"


@dataclass(frozen=True)
class StowTarget:
    url: str  # the DICOMweb base, credentials included

    @property
    def label(self) -> str:
        """The URL without credentials (for metrics, logs and the outbox)."""
        p = urlparse(self.url)
        host = p.hostname or ""
        netloc = f"{host}:{p.port}" if p.port else host
        return urlunparse((p.scheme, netloc, p.path.rstrip("/"), "", "", ""))

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    def __str__(self) -> str:
        return self.label


def stow_files(paths: list[Path], target: StowTarget, timeout_s: float = 60.0,
               tls_context: ssl.SSLContext | None = None) -> SendReport:
    report = SendReport()
    by_uid: dict[str, Path] = {}
    for p in paths:
        header = dicom_header(p)
        if header is None:
            report.skipped.append(p)
        else:
            by_uid[header[1]] = p
    if not by_uid:
        return report
    boundary = f"llnm-{uuid.uuid4().hex}"
    body = bytearray()
    for p in by_uid.values():
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += p.read_bytes()
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    parsed = urlparse(target.url)
    clean = urlunparse(parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")))
    request = urllib.request.Request(clean.rstrip("/") + "/studies", data=bytes(body), method="POST")
    request.add_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    request.add_header("Accept", "application/dicom+json")
    if parsed.username:
        token = base64.b64encode(f"{parsed.username}:{parsed.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=tls_context) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        answer = exc.read() if exc.code in (202, 409) else b""
        if not answer:
            for p in by_uid.values():
                report.failed[p] = f"HTTP {exc.code}"
            return report
    except (OSError, ValueError) as exc:
        for p in by_uid.values():
            report.failed[p] = f"STOW-RS failed: {type(exc).__name__}"
        return report
    stored, failed = _parse_answer(answer)
    for uid, p in by_uid.items():
        if uid in stored:
            report.sent.append(p)
        else:
            report.failed[p] = failed.get(uid, "not in the STOW-RS answer")
    return report


def _parse_answer(answer: bytes) -> tuple[set[str], dict[str, str]]:
    try:
        data = json.loads(answer or b"{}")
    except ValueError:
        return set(), {}
    if isinstance(data, list):
        data = data[0] if data else {}

    def items(tag: str) -> list[dict]:
        return (data.get(tag) or {}).get("Value") or []

    def uid(item: dict) -> str:
        return ((item.get(_REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0]

    stored = {uid(i) for i in items(_REFERENCED_SOP_SEQUENCE)}
    failed = {uid(i): f"failure reason {((i.get(_FAILURE_REASON) or {}).get('Value') or ['?'])[0]}"
              for i in items(_FAILED_SOP_SEQUENCE)}
    return stored - {""}, failed
