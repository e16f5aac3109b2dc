"""What a peer may do inside an association, and how a peer that breaks it is logged.

pynetdicom accumulates a DIMSE message's command set, and any data set that is not a C-STORE data set,
in memory for as long as its fragments keep coming: a peer that never sends the last fragment, or sends
data set fragments before any command set, grows one association without bound (300 MiB of fragments:
the listener's RSS went from 380 to 714 MB). `PeerGuard.check_pdv` looks at each presentation data value
(PDV, PS3.8 annex E) before pynetdicom decodes it, against the state of the message being received, and
names what is wrong; the association is then aborted (`llnm.listener.pynetdicom_adapter.association` does that):

- a command set longer than `Limits.command_bytes` (a real one is a few hundred bytes);
- a data set fragment before its command set is complete (none allowed), or a command fragment inside a
  data set;
- a PDV on a presentation context that was never accepted (pynetdicom's chunked C-STORE receive raised a
  KeyError there, leaving its file behind), or a data set on another context than its command;
- a data set held in memory (anything but a C-STORE's, which goes to a file) over `Limits.memory_data_bytes`;
- an empty PDV, or a message pynetdicom cannot decode.

A bad connection gets one log line (`BadConnectionLog`, at most `LINES_PER_MINUTE` for all of them together,
then a count): our own when we abort it, or, when pynetdicom closed it, one line standing for the error
lines pynetdicom logged about it (garbage bytes made ~38 of them per garbage PDU). Every bad connection is
counted in `llnm_bad_connections_total{reason}`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Collection

from llnm.observability import metrics
from llnm.observability.logs import get_logger

log = get_logger(__name__)

#: Log lines about bad connections, all of them together, per minute; the rest are counted and summed up.
LINES_PER_MINUTE = 20


@dataclass(frozen=True)
class Limits:
    #: The command set being accumulated. A C-STORE-RQ command set is about 200 bytes; 64 KiB leaves room
    #: for any command with long UIDs and AE titles, and is what one association may hold of it.
    command_bytes: int = 64 * 1024
    #: A data set pynetdicom holds in memory (not a C-STORE's: those go to a file, bounded by
    #: LLNM_MAX_INSTANCE_MB). The listener serves no service that takes one, so this only bounds a peer
    #: that sends one anyway.
    memory_data_bytes: int = 1024 * 1024


LIMITS = Limits()


@dataclass(frozen=True)
class MessageState:
    """The DIMSE message an association is receiving, as pynetdicom holds it (`hooks.message_state`)."""

    command_complete: bool = False  # its command set is decoded: data set fragments may follow
    context_id: int | None = None  # the presentation context of its command set, once complete
    command_bytes: int = 0  # command set bytes accumulated so far
    memory_data_bytes: int = 0  # data set bytes accumulated in memory
    data_to_file: bool = False  # its data set is received into a file (a C-STORE's)


@dataclass(frozen=True)
class Violation:
    reason: str  # one of REASONS
    bytes: int | None = None
    error: str | None = None


#: reason -> log line. These are the label values of llnm_bad_connections_total.
REASONS = {
    "command_too_long": "association aborted: command set over the size limit",
    "data_before_command": "association aborted: data set fragment before its command set",
    "command_in_data_set": "association aborted: command set fragment inside a data set",
    "context_not_accepted": "association aborted: data on a presentation context that was never accepted",
    "context_changed": "association aborted: data set on another presentation context than its command",
    "data_set_too_long": "association aborted: data set held in memory over the size limit",
    "empty_pdv": "association aborted: empty presentation data value",
    "message_error": "association aborted: DIMSE message that could not be received",
    "pdu_too_long": "connection closed: PDU over the size limit",
    "peer_error": "bad connection closed",  # pynetdicom closed it; `error` is its first error line
}
for _reason in REASONS:  # every series exists from the start: dashboards show zeros, not gaps
    metrics.BAD_CONNECTIONS.labels(reason=_reason)


class BadConnectionLog:
    """At most `per_minute` lines a minute, then one line counting those held back. A flood of bad
    connections (a fuzzer, a port scan, a broken device retrying) must not become a flood of log lines;
    the metric counts every one."""

    def __init__(self, per_minute: int = LINES_PER_MINUTE, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._lines = 0
        self._held_back = 0

    def _roll(self) -> int:
        """Start a new window if this one is over; returns how many lines the old one held back."""
        now = self.clock()
        if now - self._window_start < 60.0:
            return 0
        held, self._held_back, self._lines, self._window_start = self._held_back, 0, 0, now
        return held

    def warning(self, msg: str, **fields: object) -> bool:
        with self._lock:
            held = self._roll()
            allowed = self._lines < self.per_minute
            if allowed:
                self._lines += 1
            else:
                self._held_back += 1
        if held:
            log.warning("bad connections not logged (rate limit)", count=held)
        if allowed:
            log.warning(msg, **fields)
        return allowed

    def flush(self) -> None:
        """Log the count held back once its minute is over (the listener's sweep calls this)."""
        with self._lock:
            held = self._roll()
        if held:
            log.warning("bad connections not logged (rate limit)", count=held)


class PeerGuard:
    """One connection: checks what its peer sends inside the association, and logs it once if it is bad."""

    def __init__(self, peer: str, lines: BadConnectionLog, calling_ae: Callable[[], str] = lambda: "",
                 limits: Limits = LIMITS) -> None:
        self.peer = peer
        self.lines = lines
        self.calling_ae = calling_ae
        self.limits = limits
        self.aborted = False  # set by `refuse`: whatever else the peer sends is dropped unread
        self._lock = threading.Lock()
        self._reported = False
        self._closed = False
        self._library_lines = 0
        self._library_first: str | None = None

    # -- what the peer sends -----------------------------------------------------------------------------
    def check_pdv(self, context_id: int, fragment: bytes, state: MessageState,
                  accepted: Collection[int]) -> Violation | None:
        """`fragment` is a PDV's message control header and its bytes (PS3.8 E.2)."""
        if not fragment:
            return Violation("empty_pdv")
        if context_id not in accepted:
            return Violation("context_not_accepted")
        size = len(fragment) - 1
        if fragment[0] & 0x01:  # a command set fragment
            if state.command_complete:
                return Violation("command_in_data_set")
            if state.command_bytes + size > self.limits.command_bytes:
                return Violation("command_too_long", bytes=state.command_bytes + size)
            return None
        if not state.command_complete:
            return Violation("data_before_command", bytes=size)
        if context_id != state.context_id:
            return Violation("context_changed")
        if not state.data_to_file and state.memory_data_bytes + size > self.limits.memory_data_bytes:
            return Violation("data_set_too_long", bytes=state.memory_data_bytes + size)
        return None

    # -- what is logged ----------------------------------------------------------------------------------
    def refuse(self, violation: Violation) -> None:
        """We end this connection: one line now (pynetdicom's lines about it are folded into it)."""
        with self._lock:
            self.aborted = True
            first = not self._reported
            self._reported = True
        if first:
            metrics.BAD_CONNECTIONS.labels(reason=violation.reason).inc()
            self.lines.warning(REASONS[violation.reason], **_present(
                reason=violation.reason, peer=self.peer, calling_ae=self._calling_ae(), bytes=violation.bytes,
                error=violation.error))

    def library_error(self, message: str) -> None:
        """pynetdicom logged an error about this connection: counted, not logged (see `closed`)."""
        with self._lock:
            self._library_lines += 1
            if self._library_first is None:
                self._library_first = message[:200]
            late = self._closed and not self._reported
            if late:
                self._reported = True
        if late:  # logged after the connection closed: its own line
            self._report_library()

    def closed(self) -> None:
        """The connection is closed: one line if pynetdicom logged errors about it and we did not."""
        with self._lock:
            self._closed = True
            report = self._library_lines > 0 and not self._reported
            if report:
                self._reported = True
        if report:
            self._report_library()

    def _report_library(self) -> None:
        metrics.BAD_CONNECTIONS.labels(reason="peer_error").inc()
        self.lines.warning(REASONS["peer_error"], **_present(
            reason="peer_error", peer=self.peer, calling_ae=self._calling_ae(), error=self._library_first,
            count=self._library_lines))

    def _calling_ae(self) -> str | None:
        try:
            return self.calling_ae() or None
        except Exception:  # before the A-ASSOCIATE-RQ there is none
            return None


def _present(**fields: object) -> dict[str, object]:
    return {k: v for k, v in fields.items() if v is not None}
