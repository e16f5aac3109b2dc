"""The pynetdicom internals `llnm.listener.pynetdicom_adapter.association` patches are still there, still called where the hooks expect,
and each hook still works end to end. Run after any pynetdicom upgrade: a failure here names the hook an
upgrade broke; widen the pin in pyproject.toml only when this file passes (with the other listener tests).

(The `_complete_command` hook, a C-STORE without its Affected SOP UIDs, is tested end to end by
tests/security/test_listener_bounds.py::test_a_store_request_without_affected_sop_uid_is_refused_not_crashed.)"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
import socket
import struct
import time
import tomllib
from pathlib import Path

import pynetdicom
import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, dimse_messages, fsm
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

from llnm.config import Settings
from llnm.listener.pynetdicom_adapter import association as hooks
from llnm.listener.app import MAX_PDU_BYTES, Listener

from .conftest import free_port, running_listener

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
VERIFICATION = "1.2.840.10008.1.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"



@pytest.fixture
def listener(tmp_path: Path):
    with running_listener(tmp_path, network_timeout_s=5) as running:
        yield running


# -- the version pin --------------------------------------------------------------------------------------
def test_the_installed_pynetdicom_is_the_pinned_and_tested_one():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pinned = [d for d in dependencies if re.match(r"pynetdicom\b", d)]
    assert pinned == [f"pynetdicom{hooks.SUPPORTED_VERSIONS}"], "pyproject.toml and hooks.SUPPORTED_VERSIONS differ"
    supported = SpecifierSet(hooks.SUPPORTED_VERSIONS)
    assert Version(hooks.TESTED_VERSION) in supported
    assert Version(pynetdicom.__version__) in supported, (
        f"pynetdicom {pynetdicom.__version__} is outside {hooks.SUPPORTED_VERSIONS}: check every hook in "
        "llnm.listener.pynetdicom_adapter.association against it, then this file")


# -- the hook points --------------------------------------------------------------------------------------
def test_every_hook_point_is_there():
    from pynetdicom import AE

    from llnm.listener import pynetdicom_adapter

    assert hooks.check_hook_points() == []
    assert pynetdicom_adapter.check_hook_points(AE()) == []  # inside associations and the accept loop


def _source(obj: object) -> str:
    return inspect.getsource(obj)


def test_pynetdicom_still_calls_the_hooks_where_they_expect():
    decode = _source(dimse_messages.DIMSEMessage.decode_msg)
    # 1. chunked receive: the file is opened through the module's NamedTemporaryFile, after the command
    #    set is decoded, for a C-STORE-RQ only
    assert "_config.STORE_RECV_CHUNKED_DATASET" in decode and "NamedTemporaryFile(" in decode
    assert decode.index("self.command_set = decode(") < decode.index("NamedTemporaryFile(")
    # 3. what message_state reads: command fragments accumulate here, data fragments there
    assert "self.encoded_command_set.write(data[1:])" in decode
    assert "self._data_set_file.write(data[1:])" in decode and "self.data_set).write(data[1:])" in decode
    assert "control_header_byte & 1" in decode and "self.context_id = context_id" in decode
    assert "self.__class__ = _MESSAGE_TYPES[" in decode  # a DIMSEMessage until its command set is decoded
    receive = _source(DIMSEServiceProvider.receive_primitive)
    assert "self.message.decode_msg(primitive, self.assoc)" in receive and "self.message = None" in receive
    assert "dul.assoc.dimse.receive_primitive(" in _source(fsm.DT_2)
    assert fsm.TRANSITION_TABLE[("Evt19", "Sta6")] == "AA-8"
    # 2. the PDU is read in two socket reads: its header, then its announced length at once
    read = _source(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in read and "self.socket.recv(pdu_length)" in read
    assert "except (OSError, TimeoutError)" in read


def test_every_pynetdicom_logger_is_folded():
    hooks.install()
    logging_modules = set()
    for info in pkgutil.iter_modules(pynetdicom.__path__):
        module = importlib.import_module(f"pynetdicom.{info.name}")
        if isinstance(getattr(module, "LOGGER", None), logging.Logger):
            logging_modules.add(info.name)
    assert logging_modules <= set(hooks.LIBRARY_MODULES), "a new pynetdicom module logs: add it to LIBRARY_MODULES"
    for name in hooks.LIBRARY_MODULES:
        logger = logging.getLogger(f"pynetdicom.{name}")
        assert any(isinstance(f, hooks._FoldIntoConnection) for f in logger.filters), name


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag, len(value)) + value


def _echo_command(data_set: bool) -> bytes:
    """A C-ECHO-RQ command set (implicit VR little endian), optionally announcing a data set."""
    body = (_element(0x0002, b"1.2.840.10008.1.1\x00") + _element(0x0100, struct.pack("<H", 0x0030))
            + _element(0x0110, struct.pack("<H", 1))
            + _element(0x0800, struct.pack("<H", 0x0001 if data_set else 0x0101)))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def test_the_message_state_follows_pynetdicom_fragment_by_fragment():
    """Feed pynetdicom's own DIMSEMessage a C-ECHO-RQ announcing a data set, one PDV at a time."""
    from pynetdicom.pdu_primitives import P_DATA

    def pdv(control: int, fragment: bytes) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[1, bytes([control]) + fragment]]
        return primitive

    command = _echo_command(data_set=True)
    received = dimse_messages.DIMSEMessage()
    assert hooks.message_state(None) == hooks.MessageState()
    assert received.decode_msg(pdv(0x01, command[:20])) is False
    state = hooks.message_state(received)
    assert not state.command_complete and state.command_bytes == 20 and state.context_id is None
    assert received.decode_msg(pdv(0x03, command[20:])) is False  # complete; its data set follows
    state = hooks.message_state(received)
    assert state.command_complete and state.context_id == 1 and state.command_bytes == len(command)
    assert not state.data_to_file and state.memory_data_bytes == 0
    assert received.decode_msg(pdv(0x00, bytes(100))) is False
    assert hooks.message_state(received).memory_data_bytes == 100
    assert received.decode_msg(pdv(0x02, bytes(10))) is True


# -- each hook end to end ---------------------------------------------------------------------------------
def _image() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = US_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.1"
    ds.Modality = "US"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    return ds


def test_a_c_store_data_set_is_received_into_our_file(listener, monkeypatch):
    opened = []
    open_file = listener.incoming.open
    monkeypatch.setattr(listener.incoming, "open", lambda assoc: opened.append(open_file(assoc)) or opened[-1])
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(US_IMAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LLNM")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(_image()).Status) == 0
    finally:
        assoc.release()
    assert len(opened) == 1 and Path(opened[0].name).parent == listener.incoming.directory
    assert len(listener.spool.instances("1.2.3")) == 1


def _associate_rq(contexts: dict[int, str]) -> bytes:
    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    items = item(0x10, b"1.2.840.10008.3.1.1.1")
    for cx, uid in contexts.items():
        items += item(0x20, bytes([cx, 0, 0, 0]) + item(0x30, uid.encode()) + item(0x40, b"1.2.840.10008.1.2"))
    items += item(0x50, item(0x51, struct.pack(">I", 65536)) + item(0x52, b"1.2.826.0.1.3680043.9.1"))
    body = struct.pack(">HH", 1, 0) + b"LLNM".ljust(16) + b"HOOKTEST".ljust(16) + bytes(32) + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _reply(sock: socket.socket) -> int | None:
    """The type of the next PDU from the listener, None once it closed the connection."""
    sock.settimeout(10)
    try:
        head = sock.recv(6)
    except ConnectionResetError:
        return None
    return head[0] if len(head) == 6 else None


def test_a_pdu_over_the_limit_is_refused_with_one_line(listener, caplog):
    caplog.set_level(logging.WARNING)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBI", 0x01, 0, MAX_PDU_BYTES + 1) + bytes(64))
        assert _reply(sock) in (None, 0x07)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.llnm_fields.get("reason") for r in lines] == ["pdu_too_long"], [r.getMessage() for r in lines]


def test_the_guard_aborts_from_the_reader_thread(listener, caplog):
    """A C-ECHO on a context never proposed: A-ABORT from the listener, one line, no pynetdicom lines."""
    caplog.set_level(logging.WARNING)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(_associate_rq({1: VERIFICATION}))
        assert _reply(sock) == 0x02
        sock.recv(65536)  # the rest of the A-ASSOCIATE-AC
        command = _echo_command(data_set=False)
        sock.sendall(struct.pack(">BBIIBB", 0x04, 0, len(command) + 6, len(command) + 2, 7, 0x03) + command)
        assert _reply(sock) == 0x07
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.llnm_fields.get("reason") for r in lines] == ["context_not_accepted"], [r.getMessage() for r in lines]


def test_pynetdicom_lines_about_a_connection_are_folded_into_one(listener, caplog):
    caplog.set_level(logging.DEBUG, logger="pynetdicom")
    caplog.set_level(logging.WARNING)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"\x99" + bytes(5) + b"\x42" * 64)  # an unknown PDU type: pynetdicom logs errors about it
        assert _reply(sock) in (None, 0x07)
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.name.startswith("llnm")] and time.monotonic() < deadline:
        time.sleep(0.05)
    library = [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno >= logging.WARNING]
    ours = [r for r in caplog.records if r.name.startswith("llnm") and r.levelno >= logging.WARNING]
    assert not library, [r.getMessage() for r in library]
    assert len(ours) == 1 and ours[0].llnm_fields["reason"] == "peer_error"
    assert ours[0].llnm_fields["error"].startswith("Unknown PDU type") and ours[0].llnm_fields["count"] >= 1


def test_the_listener_refuses_to_start_when_a_hook_point_is_gone(monkeypatch):
    monkeypatch.setattr(hooks, "_installed", False)
    monkeypatch.delattr(DIMSEServiceProvider, "receive_primitive")
    with pytest.raises(RuntimeError, match="receive_primitive"):
        hooks.install()
