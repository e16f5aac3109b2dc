"""Where results go (`LLNM_DESTINATIONS`, comma-separated): DICOM nodes `AE@host:port[;tls]` (C-STORE) and
DICOMweb bases `http(s)://[user:password@]host[:port]/path` (STOW-RS)."""

from __future__ import annotations

import ssl
from pathlib import Path

from llnm.config import Settings
from llnm.dimse import Node, ReloadingTLSContext, client_tls_context, parse_node
from llnm.worker.sender import SendReport, send_files
from llnm.worker.stow import StowTarget, stow_files

Destination = Node | StowTarget


def parse_destinations(text: str) -> list[Destination]:
    out: list[Destination] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        out.append(StowTarget(part) if part.startswith(("http://", "https://")) else parse_node(part))
    return out


class Sender:
    """Sends files to any destination kind with the service's AE title, timeouts and TLS settings. The TLS
    files are re-read when they change (a rotated client certificate or CA is used without a restart)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tls: ReloadingTLSContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            s = self.settings
            self._tls = ReloadingTLSContext(lambda: client_tls_context(s.tls_ca, s.tls_cert, s.tls_key),
                                            s.tls_ca, s.tls_cert, s.tls_key)
        return self._tls.current()

    def send(self, paths: list[Path], destination: Destination) -> SendReport:
        s = self.settings
        tls = self._tls_context() if destination.tls else None
        if isinstance(destination, StowTarget):
            return stow_files(paths, destination, s.network_timeout_s, tls)
        return send_files(paths, destination, s.sender_ae_title, s.network_timeout_s, tls)
