"""The listener's accept loop: pynetdicom's association server with a pre-association stage in front.

pynetdicom (3.x) turns every accepted socket into an association at once: a thread that counts toward
`maximum_associations` from the moment the TCP connection exists, and, with TLS, a handshake run inside the
accept loop without a timeout. So a few silent sockets use up the association slots, and one TLS peer that
stops mid-handshake blocks every new connection. Here each accepted socket first waits, in its own thread
and without an association, until its peer has sent its whole A-ASSOCIATE-RQ (TLS: completed the handshake,
then sent its first bytes), for at most `request_timeout_s` from the accept. Only then does pynetdicom see
it, exactly as it would have. Sockets in that stage are bounded separately (`max_pending`); when they are all taken, the
oldest is dropped so a new sender always gets in. The accept loop itself only accepts, books and starts a
thread. Each refusal is counted in `llnm_connections_refused_total{reason}` and logged through the
listener's rate-limited `BadConnectionLog`, with the peer's address and OpenSSL's short error code only.

The pynetdicom internals this relies on (part of `llnm.listener.pynetdicom_adapter`), checked against pynetdicom 3.0:
`AssociationServer.get_request` (overridden: no TLS wrap in the accept loop), `process_request` (overridden:
the pre-association stage in a thread, then `finish_request`, which builds the association as before),
`server_close`, the `ssl_context` attribute, `AE.make_server(server_class=...)` and `AE._servers` (what
`AE.start_server` does, with our class); and `rejection_reason` redoes the rejection checks of
`ACSE._negotiate_as_acceptor`. `check_hook_points` refuses to start on a pynetdicom where these changed;
`tests/security/test_accept_loop.py` and `tests/security/test_tls_peers.py` must pass after an upgrade.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from datetime import datetime
from typing import Any, Protocol

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from llnm.listener.guard import BadConnectionLog
from llnm.observability import metrics
from llnm.observability.logs import get_logger

log = get_logger(__name__)

_POLL_IN = select.POLLIN | select.POLLPRI

#: A plain connection's A-ASSOCIATE-RQ is waited for whole (it is a few hundred bytes, sent in one write) up
#: to this size; a longer one, or first bytes that are no A-ASSOCIATE-RQ, go to pynetdicom as they are.
REQUEST_PEEK_BYTES = 64 * 1024


class _Pending:
    """A socket in the pre-association stage, as the accept loop booked it."""

    __slots__ = ("sock", "dropped")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.dropped: str | None = None  # why another thread shut it down: "pre_association_limit", "shutdown"


class _Refused(Exception):
    """The connection is closed before any association: `reason` is a `metrics.REFUSAL_REASONS` value,
    or "" when the peer left by itself (nothing to count)."""

    def __init__(self, reason: str, error: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class WarningLines(Protocol):
    """Where refusals are logged: `llnm.listener.guard.BadConnectionLog`, the listener's one rate-limited
    log of bad peers (a flood of cheap hostile connections must not become a flood of log lines)."""

    def warning(self, msg: str, **fields: Any) -> object: ...


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, with the pre-association stage described above."""

    #: The kernel's queue of connections not yet accepted (socketserver's default is 5): a burst of
    #: connections must not make a valid sender's SYN wait for a retransmission.
    request_queue_size = 128

    def __init__(self, *args: Any, request_timeout_s: float = 5.0, max_pending: int = 64,
                 lines: WarningLines | None = None, **kwargs: Any) -> None:
        self.request_timeout_s = float(request_timeout_s)
        self.max_pending = max(1, int(max_pending))
        self.lines: WarningLines = lines if lines is not None else BadConnectionLog()
        self._pending: dict[int, _Pending] = {}  # insertion order: the oldest first
        self._pending_lock = threading.Lock()
        self._closing = False
        super().__init__(*args, **kwargs)

    @property
    def pending_connections(self) -> int:
        """Sockets accepted but not yet handed to pynetdicom as associations."""
        return len(self._pending)

    # -- the accept loop (one thread: nothing here may wait on a peer) ----------------------------------
    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only; pynetdicom's version also does the TLS handshake here, blocking the loop."""
        assert self.socket is not None
        return self.socket.accept()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Book the socket (dropping the oldest pending one when all are taken) and start its thread."""
        entry = _Pending(request)
        with self._pending_lock:
            if self._closing:
                self.shutdown_request(request)
                return
            if len(self._pending) >= self.max_pending:
                oldest = self._pending.pop(next(iter(self._pending)))
                oldest.dropped = "pre_association_limit"
                _shutdown(oldest.sock)  # under the lock: its thread cannot have closed it (fd reuse)
            self._pending[id(entry)] = entry
        thread = threading.Thread(target=make_target(self._pre_association), args=(entry, client_address),
                                  name=f"llnm-pending@{datetime.now():%Y%m%d%H%M%S}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse this one, keep accepting
            self._release(entry)
            self.shutdown_request(request)
            metrics.CONNECTIONS_REFUSED.labels(reason="pre_association_limit").inc()
            self.lines.warning("connection closed: cannot start its thread", reason="pre_association_limit",
                               peer=_host(client_address))

    # -- one connection, in its own thread --------------------------------------------------------------
    def _pre_association(self, entry: _Pending, client_address: Any) -> None:
        deadline = time.monotonic() + self.request_timeout_s
        sock = entry.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the TLS handshake too, not only PDUs
            sock.setblocking(False)
            _wait_first_byte(sock, deadline)
            if self.ssl_context is None:
                _wait_whole_request(sock, deadline, entry)
            else:
                with self._pending_lock:
                    if entry.dropped:
                        raise _Refused(entry.dropped)
                    sock = entry.sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False)
                _handshake(sock, deadline)
                if not sock.pending():
                    _wait(sock, _POLL_IN, deadline, "no_association_request")
            sock.setblocking(True)  # as pynetdicom's accepted sockets are; bound_reads sets the timeout
        except (_Refused, OSError, ValueError) as exc:
            refusal = exc if isinstance(exc, _Refused) else _Refused("", type(exc).__name__)
            dropped = self._release(entry)
            _close(sock)
            self._refused(dropped or refusal.reason, refusal.error, client_address)
            return
        if self._release(entry):  # dropped while its first bytes arrived: it was the oldest
            _close(sock)
            self._refused("pre_association_limit", "", client_address)
            return
        try:
            self.finish_request(sock, client_address)  # pynetdicom: the association, EVT_CONN_OPEN, its thread
        except Exception as exc:  # pynetdicom's own version prints a traceback to stderr
            log.error("connection closed: its association could not start", error=type(exc).__name__,
                      peer=_host(client_address))
            _close(sock)

    def _release(self, entry: _Pending) -> str | None:
        """Unbook the entry; returns why it was dropped by another thread, if it was."""
        with self._pending_lock:
            self._pending.pop(id(entry), None)
            return entry.dropped

    def _refused(self, reason: str, error: str, client_address: Any) -> None:
        peer = _host(client_address)
        if reason == "shutdown":
            return
        if not reason:  # the peer closed (or reset) before sending anything: a port probe, not a refusal
            log.debug("connection closed by the peer before an association request", peer=peer, error=error)
            return
        message = {
            "no_association_request": "connection closed: no association request in time",
            "pre_association_limit": "connection closed: too many connections without an association",
            "tls_handshake_timeout": "TLS connection refused: handshake not completed in time",
            "tls_handshake_failed": "TLS connection refused: handshake failed",
        }[reason]
        metrics.CONNECTIONS_REFUSED.labels(reason=reason).inc()
        fields: dict[str, Any] = {"reason": reason, "peer": peer}
        if reason.endswith(("_timeout", "_request")):
            fields["seconds"] = self.request_timeout_s
        if error:
            fields["error"] = error
        self.lines.warning(message, **fields)

    def server_close(self) -> None:
        """Close the pending sockets too, so their threads end now and none becomes an association."""
        with self._pending_lock:
            self._closing = True
            for entry in self._pending.values():
                entry.dropped = "shutdown"
                _shutdown(entry.sock)
            self._pending.clear()
        super().server_close()


def start_server(ae: AE, address: tuple[str, int], evt_handlers: list, ssl_context: ssl.SSLContext | None,
                 request_timeout_s: float, max_pending: int,
                 lines: WarningLines | None = None) -> GuardedAssociationServer:
    """`ae.start_server(address, block=False, ...)` with `GuardedAssociationServer` as the server."""
    problems = check_hook_points(ae)
    if problems:
        raise RuntimeError("the listener's accept loop does not fit this pynetdicom: " + "; ".join(problems))
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                            server_class=GuardedAssociationServer, request_timeout_s=request_timeout_s,
                            max_pending=max_pending, lines=lines)
    thread = threading.Thread(target=make_target(server.serve_forever),
                              name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}", daemon=True)
    thread.start()
    ae._servers.append(server)  # what start_server does: AE.shutdown() and server.shutdown() rely on it
    return server


def check_hook_points(ae: AE) -> list[str]:
    """What this module relies on in the installed pynetdicom, as readable lines (empty: all there)."""
    import inspect

    from pynetdicom.transport import AssociationServer

    def params(func: Any) -> list[str]:
        try:
            return list(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            return []

    problems = []
    if not {"server_class", "kwargs"} <= set(params(AE.make_server)):
        problems.append("AE.make_server(..., server_class, **kwargs) changed")
    if not isinstance(getattr(ae, "_servers", None), list):
        problems.append("AE._servers is gone")
    if params(AssociationServer.get_request) != ["self"]:
        problems.append("AssociationServer.get_request(self) changed")
    for name in ("process_request", "finish_request"):
        if params(getattr(AssociationServer, name, None)) != ["self", "request", "client_address"]:
            problems.append(f"AssociationServer.{name}(self, request, client_address) changed")
    if not isinstance(getattr(AssociationServer, "ssl_context", None), property):
        problems.append("AssociationServer.ssl_context is gone")
    return problems


def rejection_reason(assoc: Any) -> str:
    """Why pynetdicom rejected an association (EVT_REJECTED carries no reason): its checks in
    `ACSE._negotiate_as_acceptor`, redone. A `metrics.REFUSAL_REASONS` value."""
    ae = assoc.ae
    rq = assoc.requestor.primitive
    if ae.require_called_aet and rq is not None and rq.called_ae_title != assoc.acceptor.ae_title.strip():
        return "called_ae_not_recognised"
    if sum(1 for a in ae.active_associations if a.is_acceptor) > ae.maximum_associations:
        return "association_limit"
    return "rejected_other"


# -- socket helpers -------------------------------------------------------------------------------------
def _wait(sock: socket.socket, events: int, deadline: float, reason: str) -> None:
    """Wait until `sock` is ready for `events` (or closed); `_Refused(reason)` at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        poller = select.poll()  # not select.select: file descriptors above 1024 are fine
        poller.register(sock, events)
        if poller.poll(remaining * 1000):
            return
    raise _Refused(reason)


def _wait_first_byte(sock: socket.socket, deadline: float) -> None:
    """Return once the peer has sent a byte (left in the socket); `_Refused("")` when it closed first."""
    while True:
        _wait(sock, _POLL_IN, deadline, "no_association_request")
        try:
            if sock.recv(1, socket.MSG_PEEK):
                return
        except BlockingIOError:
            continue
        except OSError as exc:  # reset by the peer, or shut down by the accept loop
            raise _Refused("", type(exc).__name__) from None
        raise _Refused("")


def _wait_whole_request(sock: socket.socket, deadline: float, entry: _Pending) -> None:
    """Plain TCP: return once the first PDU, if it is an A-ASSOCIATE-RQ, is all in the socket's receive
    buffer, so a peer that sends a byte and stalls holds no association slot either. Anything else (another
    PDU type, a length over REQUEST_PEEK_BYTES) returns at once: pynetdicom refuses it, as before."""
    pause = 0.002
    while not entry.dropped:
        head = sock.recv(REQUEST_PEEK_BYTES, socket.MSG_PEEK)
        if not head:
            raise _Refused("")
        if head[0] != 0x01:
            return
        if len(head) >= 6:
            needed = 6 + int.from_bytes(head[2:6], "big")
            if needed > REQUEST_PEEK_BYTES or len(head) >= needed:
                return
        # the rest is still on its way: poll would answer at once (what came is readable), so sleep a little
        if time.monotonic() + pause > deadline:
            raise _Refused("no_association_request")
        time.sleep(pause)
        pause = min(2 * pause, 0.1)
    raise _Refused(entry.dropped)


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """The server side of the TLS handshake, non-blocking, so `deadline` bounds all of it (a peer sending
    one byte a second gets no more time than a silent one)."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            _wait(sock, _POLL_IN, deadline, "tls_handshake_timeout")
        except ssl.SSLWantWriteError:
            _wait(sock, select.POLLOUT, deadline, "tls_handshake_timeout")
        except ssl.SSLError as exc:  # the reason is OpenSSL's short code: no names, no certificate subjects
            raise _Refused("tls_handshake_failed", str(exc.reason or type(exc).__name__)) from None
        except OSError as exc:
            raise _Refused("tls_handshake_failed", type(exc).__name__) from None


def _shutdown(sock: socket.socket) -> None:
    """Wake the thread waiting on `sock`: it reads end of file. The plain socket's shutdown, also for a TLS
    socket (whose own shutdown would clear its TLS state under the handshake running in that thread)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _host(client_address: Any) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) and client_address else str(client_address)
