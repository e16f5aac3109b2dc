"""DICOM network helpers shared by the listener (SCP) and the sender (SCU): DICOM TLS contexts,
TCP_NODELAY on every association socket, and parsing `AE@host:port` node addresses.

Without TCP_NODELAY each small PDU write waits for the peer's delayed ACK (design.md section 8: 22-60
instances/s instead of > 1,000/s); pynetdicom does not set it, so an EVT_CONN_OPEN handler does.

Certificates rotate (cert-manager renews them, Kubernetes swaps the files of a mounted Secret in place):
`ReloadingTLSContext` re-reads the PEM files when they changed on disk, so new connections use the new
certificate without a restart; connections already open keep the context they started with.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Callable

from pynetdicom import evt

from llnm.observability.logs import get_logger

log = get_logger(__name__)

_NODE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Node:
    """A DICOM node to send to: `AE@host:port`, with `;tls` for DICOM TLS."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    @property
    def label(self) -> str:
        """Used in metrics and logs (an AE title and address, no patient data)."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.label + (";tls" if self.tls else "")


def parse_node(text: str) -> Node:
    head, *options = [p.strip() for p in text.strip().split(";")]
    m = _NODE.match(head)
    if not m:
        raise ValueError(f"bad DICOM node {text!r}: expected AE@host:port (optionally ;tls)")
    unknown = set(options) - {"tls", ""}
    if unknown:
        raise ValueError(f"bad DICOM node {text!r}: unknown option(s) {sorted(unknown)}")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise ValueError(f"bad DICOM node {text!r}: port out of range")
    return Node(m["ae"].strip(), m["host"].strip("[]"), port, tls="tls" in options)


def parse_nodes(text: str) -> list[Node]:
    return [parse_node(part) for part in (text or "").split(",") if part.strip()]


def _nodelay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


#: Bind on every association (acceptor and requestor) so its socket sends without delay.
NODELAY_HANDLER = (evt.EVT_CONN_OPEN, _nodelay)


def server_tls_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext:
    """TLS for the listener; with `ca`, clients must present a certificate signed by it."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=cert, keyfile=key)
    ctx.verify_mode = ssl.CERT_REQUIRED if ca else ssl.CERT_NONE
    return ctx


def client_tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """TLS for sending: verify the server against `ca` (system CAs when empty); `cert`/`key` is our
    client certificate when the peer asks for one."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def _files_fingerprint(paths: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """(inode, size, mtime) of each file, following symlinks (a Secret volume's update swaps a link)."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ReloadingTLSContext:
    """A TLS context rebuilt from its PEM files whenever they change on disk.

    `current()` is cheap (a stat of each file) and returns the context for the next connection. A rebuild
    that fails (files caught half-replaced, a key that does not match) keeps the previous context, logs
    once, and is tried again on the next call."""

    def __init__(self, build: Callable[[], ssl.SSLContext], *paths: str) -> None:
        self._build = build
        self.paths = tuple(p for p in paths if p)
        self._seen = _files_fingerprint(self.paths)
        self._context = build()
        self._failed: tuple[tuple[int, int, int] | None, ...] | None = None

    def current(self) -> ssl.SSLContext:
        now = _files_fingerprint(self.paths)
        if now != self._seen:
            try:
                context = self._build()
            except (OSError, ssl.SSLError, ValueError) as exc:
                if now != self._failed:
                    log.error("TLS certificate files changed but cannot be loaded: keeping the previous ones",
                              error=type(exc).__name__)
                    self._failed = now
                return self._context
            self._context, self._seen, self._failed = context, now, None
            log.info("TLS certificate files changed: new connections use them")
        return self._context
