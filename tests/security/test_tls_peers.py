"""TLS peers that stall, dribble or fail the handshake: the handshake runs off the accept loop with a deadline,
so other TLS senders are served meanwhile; each refused handshake is counted by reason and logged with the
peer's address and OpenSSL's short error code, no traceback and nothing the peer sent."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

from llnm.dimse import client_tls_context

from .test_accept_loop import (
    REQUEST_TIMEOUT_S,
    SERVED_WITHIN_S,
    assert_clean_logs,
    closed_by_listener,
    refused,
    served,
    start,  # noqa: F401 (the fixture: a listener with the accept loop tests' settings)
    wait_until,
)

#: The first bytes of a TLS ClientHello record: a handshake that has begun.
HANDSHAKE_START = b"\x16\x03\x01"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for localhost, used as the server's, the client's and the CA (as in
    test_tls_listener_with_self_signed_certificate)."""
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture
def tls_listener(start, certificate):
    cert, key = certificate
    return start(tls_cert=cert, tls_key=key, tls_ca=cert)


def _lines(caplog, reason: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "llnm_fields", {}).get("reason") == reason]


def served_over_tls(port: int, certificate: tuple[str, str]) -> float:
    cert, key = certificate
    return served(port, tls_args=(client_tls_context(cert, cert, key), "localhost"))


def test_a_stalled_handshake_does_not_block_other_tls_senders(tls_listener, certificate, caplog, capfd):
    caplog.set_level(logging.INFO)
    before = refused("tls_handshake_timeout")
    stalled = socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5)
    try:
        stalled.sendall(HANDSHAKE_START)
        time.sleep(0.2)  # accepted, and its handshake begun, before the valid sender comes
        assert served_over_tls(tls_listener.port, certificate) < SERVED_WITHIN_S
        assert served_over_tls(tls_listener.port, certificate) < SERVED_WITHIN_S
        assert closed_by_listener(stalled, REQUEST_TIMEOUT_S + 3), "the stalled handshake was kept"
    finally:
        stalled.close()
    assert wait_until(lambda: refused("tls_handshake_timeout") == before + 1, 2)
    assert wait_until(lambda: _lines(caplog, "tls_handshake_timeout"), 2)
    line = _lines(caplog, "tls_handshake_timeout")[0]
    assert line.levelno == logging.WARNING and line.llnm_fields["peer"] == "127.0.0.1"
    assert_clean_logs(caplog, capfd)


def test_many_stalled_and_dribbling_handshakes(tls_listener, certificate, caplog, capfd):
    """Twenty peers stalled mid-handshake, and one sending its ClientHello a byte at a time: all closed by the
    deadline (dribbling buys no time), while a TLS sender is served."""
    caplog.set_level(logging.INFO)
    before = refused("tls_handshake_timeout")
    stalled = [socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5) for _ in range(20)]
    for s in stalled:
        s.sendall(HANDSHAKE_START)
    dribbler = socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5)
    hello = HANDSHAKE_START + struct.pack(">H", 512) + b"\x01" + bytes(511)
    began = time.monotonic()
    try:
        assert served_over_tls(tls_listener.port, certificate) < SERVED_WITHIN_S
        closed_at = None
        for byte in hello:  # one byte every 0.1 s: would take 50 s
            try:
                dribbler.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic() - began
                break
            time.sleep(0.1)
            if closed_by_listener(dribbler, 0.01):
                closed_at = time.monotonic() - began
                break
        assert closed_at is not None and closed_at < REQUEST_TIMEOUT_S + 2, "dribbling kept the handshake open"
        assert all(closed_by_listener(s, 2) for s in stalled)
    finally:
        for s in [*stalled, dribbler]:
            s.close()
    assert wait_until(lambda: refused("tls_handshake_timeout") == before + 21, 2)
    assert served_over_tls(tls_listener.port, certificate) < SERVED_WITHIN_S
    assert_clean_logs(caplog, capfd)


def _associate_rq(calling: str) -> bytes:
    """A plain-text A-ASSOCIATE-RQ's fixed part (PS3.8 9.3.2), as a sender without TLS would start."""
    body = struct.pack(">HH", 1, 0) + b"LLNM".ljust(16) + calling.encode().ljust(16) + bytes(32)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def test_failed_handshakes_are_refused_counted_and_logged(tls_listener, certificate, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    cert, _ = certificate
    before = refused("tls_handshake_failed")
    # 1. a TLS client without a client certificate (the listener requires one)
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5) as raw:
        try:
            with client_tls_context(cert).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"x")
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    # 2. plain DICOM on the TLS port, carrying what could be patient data
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5) as plain:
        plain.sendall(_associate_rq("SECRET^PATIENT") + b"ID-987654" * 10)
        assert closed_by_listener(plain, 3)
    # 3. garbage
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5) as garbage:
        garbage.sendall(bytes(range(256)))
        assert closed_by_listener(garbage, 3)
    assert wait_until(lambda: refused("tls_handshake_failed") == before + 3, 3)
    assert wait_until(lambda: len(_lines(caplog, "tls_handshake_failed")) == 3, 2)
    lines = _lines(caplog, "tls_handshake_failed")
    for line in lines:
        assert line.levelno == logging.WARNING
        assert line.llnm_fields["peer"] == "127.0.0.1"
        error = line.llnm_fields["error"]
        assert re.fullmatch(r"[A-Za-z_]{3,64}", error), error  # OpenSSL's short code, or an OSError's name
    assert served_over_tls(tls_listener.port, certificate) < SERVED_WITHIN_S
    assert_clean_logs(caplog, capfd)


def test_a_tls_port_probe_is_not_a_refusal(tls_listener, certificate, caplog):
    """A TCP health check (connect, close) on the TLS port: nothing refused, nothing logged above debug."""
    caplog.set_level(logging.INFO)
    before = {r: refused(r) for r in ("tls_handshake_failed", "tls_handshake_timeout", "no_association_request")}
    for _ in range(5):
        socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5).close()
    assert wait_until(lambda: tls_listener._server.pending_connections == 0, 2)
    assert {r: refused(r) for r in before} == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert served_over_tls(tls_listener.port, certificate) < SERVED_WITHIN_S
