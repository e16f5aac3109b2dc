"""The pynetdicom internals the listener relies on inside an association (the accept loop's: `accept`).

pynetdicom has no public API for what the listener needs inside an association: receiving a C-STORE data
set into a file of ours, refusing a PDU before reading it, checking each presentation data value (PDV)
before it is decoded, aborting from the reader thread, and folding its per-PDU error lines into one line
per connection. These hooks do that on top of its internals. They were read and checked against
pynetdicom 3.0.4 (`TESTED_VERSION`); pyproject.toml pins `SUPPORTED_VERSIONS`, `check_hook_points` refuses
to start the listener when one of them is gone, and `tests/security/test_pynetdicom_hooks.py` checks each
one (its signature, the pynetdicom code that calls it, and that it works end to end): run it after any
pynetdicom upgrade, and widen the pin only when it passes.

1. Chunked receive into our files (`receive_into_files`, why: `llnm.listener.incoming`):
   `_config.STORE_RECV_CHUNKED_DATASET`; `dimse_messages.NamedTemporaryFile`, which
   `DIMSEMessage.decode_msg` calls once a C-STORE-RQ command set is complete, in the association's reader
   thread (a `DULServiceProvider`, whose `.assoc` is the association); the message being received,
   `assoc.dimse.message.command_set` (`_complete_command`).
2. PDU length (`bound_pdu_length`): `AssociationSocket.recv(nr_bytes)`, which
   `DULServiceProvider._read_pdu_data` calls for the 6-byte PDU header, then for the announced length at
   once; an OSError from it is taken as a closed connection.
3. The DIMSE receive guard (`guard_dimse`): `DIMSEServiceProvider.receive_primitive(primitive)`, which the
   state machine's DT-2 calls as `dul.assoc.dimse.receive_primitive` for each P-DATA-TF PDU (replaced per
   association); the message being received, `assoc.dimse.message`: a `DIMSEMessage` until its command
   set is decoded (then a subclass), with `encoded_command_set` and `data_set` (BytesIO), `_data_set_file`
   (our file, for a C-STORE) and `context_id`. Aborting from the reader thread (`abort_from_reader`):
   "Evt19" (invalid PDU) on `dul.event_queue`, which in Sta6 is AA-8: an A-ABORT to the peer and an
   A-P-ABORT to the association, which then ends (pynetdicom's `Association.abort` would wait for the
   very thread it is called in).
4. Log folding (`watch`): pynetdicom's module loggers (`pynetdicom.<module>`), and its threads: the reader
   thread (`DULServiceProvider.assoc`) and the association thread (an `Association`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA

from llnm.listener.guard import MessageState, PeerGuard, Violation
from llnm.observability.logs import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from llnm.listener.incoming import IncomingFiles

log = get_logger(__name__)

#: The pynetdicom release these hooks were read and tested against, and the range pyproject.toml pins.
TESTED_VERSION = "3.0.4"
SUPPORTED_VERSIONS = ">=3.0,<3.1"

#: Stands in for an absent Affected SOP Class/Instance UID (not a UID: refused by validate_uid).
MISSING = "missing"

#: pynetdicom's modules that log about a connection (all of its modules, imported by `install`).
LIBRARY_MODULES = ("acse", "ae", "association", "dimse", "dimse_messages", "dimse_primitives", "dsutils",
                   "dul", "events", "fsm", "pdu", "pdu_items", "pdu_primitives", "presentation",
                   "service_class", "service_class_n", "sop_class", "timer", "transport", "utils",
                   "_handlers", "_validators")

_LLNM_DIR = os.path.realpath(Path(__file__).parents[2]) + os.sep  # services/llnm/

#: AE -> IncomingFiles of the listener that owns it; association -> its guard (weak: they come and go).
_RECEIVERS: "weakref.WeakKeyDictionary[Any, IncomingFiles]" = weakref.WeakKeyDictionary()
_GUARDS: "weakref.WeakKeyDictionary[Any, PeerGuard]" = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
_installed = False


class PeerViolation(OSError):
    """Raised from a socket read we refuse; pynetdicom takes it for a closed connection."""


# -- installing and checking -------------------------------------------------------------------------------
def check_hook_points() -> list[str]:
    """What is missing or changed in the installed pynetdicom, as readable lines (empty: all there)."""
    import pynetdicom
    from pynetdicom import _config, dimse_messages, fsm
    from pynetdicom.association import Association
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationSocket

    problems: list[str] = []

    def params(func: Any) -> list[str]:
        try:
            return list(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            return []

    if not hasattr(_config, "STORE_RECV_CHUNKED_DATASET"):
        problems.append("_config.STORE_RECV_CHUNKED_DATASET is gone")
    if not callable(getattr(dimse_messages, "NamedTemporaryFile", None)):
        problems.append("dimse_messages.NamedTemporaryFile is gone")
    if params(getattr(DIMSEServiceProvider, "receive_primitive", None)) != ["self", "primitive"]:
        problems.append("DIMSEServiceProvider.receive_primitive(self, primitive) changed")
    if params(getattr(AssociationSocket, "recv", None)) != ["self", "nr_bytes"]:
        problems.append("AssociationSocket.recv(self, nr_bytes) changed")
    if fsm.TRANSITION_TABLE.get(("Evt19", "Sta6")) != "AA-8":
        problems.append("Evt19 in Sta6 is no longer AA-8 (abort)")
    if not isinstance(getattr(DULServiceProvider, "assoc", None), property):
        problems.append("DULServiceProvider.assoc is gone")
    if not issubclass(Association, threading.Thread):
        problems.append("Association is no longer a thread")
    message = dimse_messages.DIMSEMessage()
    for name in ("encoded_command_set", "data_set", "_data_set_file", "context_id", "command_set"):
        if not hasattr(message, name):
            problems.append(f"DIMSEMessage.{name} is gone")
    if not isinstance(getattr(P_DATA, "presentation_data_value_list", None), property):
        problems.append("P_DATA.presentation_data_value_list is gone")
    version = getattr(pynetdicom, "__version__", "?")
    if problems:
        problems.insert(0, f"pynetdicom {version} (hooks tested with {TESTED_VERSION}, {SUPPORTED_VERSIONS}):")
    return problems


def install() -> None:
    """Install the process-wide hooks once (the NamedTemporaryFile hook and the log filter); refuse to
    run on a pynetdicom whose hook points changed: the listener's bounds would silently be gone."""
    global _installed
    with _install_lock:
        if _installed:
            return
        problems = check_hook_points()
        if problems:
            raise RuntimeError("the listener's pynetdicom hooks do not fit: " + " ".join(problems))
        import importlib

        from pynetdicom import dimse_messages

        for name in LIBRARY_MODULES:
            importlib.import_module(f"pynetdicom.{name}")
        dimse_messages.NamedTemporaryFile = functools.partial(_open_for_current_association,
                                                              dimse_messages.NamedTemporaryFile)
        fold = _FoldIntoConnection()
        for name in ("pynetdicom",) + tuple(f"pynetdicom.{m}" for m in LIBRARY_MODULES):
            logging.getLogger(name).addFilter(fold)
        _installed = True


# -- 1. chunked receive into our files ---------------------------------------------------------------------
def receive_into_files(ae: Any, files: "IncomingFiles") -> None:
    """Make `ae` receive every C-STORE data set into `files` (`llnm.listener.incoming`)."""
    from pynetdicom import _config

    install()
    with _install_lock:
        _RECEIVERS[ae] = files
        _config.STORE_RECV_CHUNKED_DATASET = True


def _open_for_current_association(default: Any, *args: Any, **kwargs: Any) -> Any:
    """pynetdicom decodes P-DATA in the association's reader thread, which knows its association and AE;
    other pynetdicom users in the process (none in the services) keep a plain temporary file."""
    assoc = current_association()
    files = _RECEIVERS.get(getattr(assoc, "ae", None)) if assoc is not None else None
    if files is None:
        return default(*args, **kwargs)
    _complete_command(assoc)
    return files.open(assoc)


def _complete_command(assoc: Any) -> None:
    """A C-STORE request without its Affected SOP Class/Instance UID would crash pynetdicom's reader
    thread right after this file is opened (it writes them into the file meta), and one longer than the
    64 characters a UI allows makes pynetdicom abort the association (`message_to_primitive`): give
    them a value that is no UID instead, so the request reaches the handler and is refused there
    (0xC000, Cannot understand) on a still usable association."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    command = getattr(message, "command_set", None)
    if command is None:
        return
    for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        value = command.get(keyword)
        if not value or len(str(value)) > 64:
            setattr(command, keyword, MISSING)


# -- 2. PDU length -----------------------------------------------------------------------------------------
def bound_pdu_length(transport: Any, limit: int) -> None:
    """Disconnect a peer that announces a PDU longer than `limit` instead of reading it into memory
    (pynetdicom reads each PDU whole, trusting the length in its header), and stop reading at all once
    the association's guard aborted it. The refusal is an OSError from the socket read, which pynetdicom
    takes for a closed connection."""
    recv = getattr(transport, "recv", None)
    if recv is None:
        return

    def bounded(nr_bytes: int) -> bytearray:
        guard = guard_of(getattr(transport, "assoc", None))
        if guard is not None and guard.aborted:
            raise PeerViolation("the association was aborted: nothing more is read")
        if nr_bytes > limit:
            if guard is not None:
                guard.refuse(Violation("pdu_too_long", bytes=nr_bytes))
            else:
                log.warning("connection closed: PDU over the size limit", bytes=nr_bytes)
            raise PeerViolation(f"PDU of {nr_bytes} bytes is over the {limit} byte limit")
        return recv(nr_bytes)

    transport.recv = bounded


# -- 3. the DIMSE receive guard ----------------------------------------------------------------------------
def watch(assoc: Any, guard: PeerGuard) -> None:
    """From now on `guard` checks what `assoc`'s peer sends and pynetdicom's error lines about it are
    folded into the guard's one line (call on EVT_CONN_OPEN, before the association thread starts)."""
    _GUARDS[assoc] = guard
    guard_dimse(assoc, guard)


def guard_of(assoc: Any) -> PeerGuard | None:
    return _GUARDS.get(assoc) if assoc is not None else None


def message_state(message: Any) -> MessageState:
    """The DIMSE message pynetdicom is receiving (`assoc.dimse.message`, None between messages)."""
    if message is None:
        return MessageState()
    to_file = message._data_set_file is not None
    data_set = message.data_set
    return MessageState(
        command_complete=type(message) is not DIMSEMessage,
        context_id=message.context_id,
        command_bytes=message.encoded_command_set.tell(),
        memory_data_bytes=data_set.tell() if data_set is not None and not to_file else 0,
        data_to_file=to_file,
    )


def guard_dimse(assoc: Any, guard: PeerGuard) -> None:
    """Check each PDV before pynetdicom decodes it, one PDV at a time (so the check sees the message state
    each PDV lands in); on a violation, drop the message and abort the association. An exception from
    pynetdicom's decoding (an unknown command, an undecodable command set) aborts it too, instead of
    killing the reader thread with a traceback."""
    dimse = assoc.dimse
    receive = dimse.receive_primitive
    accepted: frozenset[int] | None = None

    def receive_primitive(primitive: Any) -> None:
        nonlocal accepted
        if guard.aborted:
            return
        if accepted is None:  # fixed once the association is established, before any P-DATA
            accepted = frozenset(int(cx.context_id) for cx in assoc.accepted_contexts)
        for context_id, fragment in primitive.presentation_data_value_list:
            violation = guard.check_pdv(context_id, fragment, message_state(dimse.message), accepted)
            if violation is None:
                one = P_DATA()
                one.presentation_data_value_list = [[int(context_id), bytes(fragment)]]
                try:
                    receive(one)
                    continue
                except Exception as exc:
                    violation = Violation("message_error", error=type(exc).__name__)
            guard.refuse(violation)
            dimse.message = None  # what it accumulated goes now; a file it opened goes when the connection closes
            abort_from_reader(assoc)
            return

    dimse.receive_primitive = receive_primitive


def abort_from_reader(assoc: Any) -> None:
    """Abort from the association's reader thread: A-ABORT to the peer, A-P-ABORT to the association."""
    assoc.dul.event_queue.put("Evt19")


# -- 4. log folding ----------------------------------------------------------------------------------------
def current_association() -> Any:
    """The association whose reader or association thread this is, else None."""
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    thread = threading.current_thread()
    if isinstance(thread, Association):
        return thread
    if isinstance(thread, DULServiceProvider):
        return thread.assoc
    return None


class _FoldIntoConnection(logging.Filter):
    """pynetdicom's warnings and errors about a watched connection (several per bad PDU, tracebacks
    included) go to its guard, which logs one line for the connection; everything else passes. An
    exception raised in our own code (a bug of ours, in an event handler) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        guard = guard_of(current_association())
        if guard is None:
            return True
        if record.exc_info and _raised_in_llnm(record.exc_info):
            return True
        if record.exc_info and record.exc_info[0] is not None:
            message = record.exc_info[0].__name__  # its text may quote what the peer sent
        else:
            message = record.getMessage()
        guard.library_error(message)
        return False


def _raised_in_llnm(exc_info: Any) -> bool:
    _, exc, tb = exc_info
    if exc is None or isinstance(exc, PeerViolation) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.realpath(tb.tb_frame.f_code.co_filename).startswith(_LLNM_DIR)
