"""C-STORE SCU: send DICOM files to a node, proposing exactly the (SOP class, transfer syntax) pairs the
files need (some PACS, Orthanc among them, refuse a SEG offered under contexts it then cannot match).
Files are sent as stored (no re-encoding). One association per call; TCP_NODELAY on its socket.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE

from llnm.dimse import NODELAY_HANDLER, Node
from llnm.observability.logs import get_logger

log = get_logger(__name__)

_MAX_CONTEXTS = 128  # DICOM's limit on presentation contexts per association
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}  # success and the storage warnings (object stored)


@dataclass
class SendReport:
    sent: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)  # path -> reason
    skipped: list[Path] = field(default_factory=list)  # not DICOM
    #: the destination accepted no presentation context for the file's SOP class (also in `failed`): the
    #: worker decides whether that object may be left out there (an IOCM rejection note may)
    refused: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def dicom_header(path: Path) -> tuple[str, str, str] | None:
    """(SOP Class UID, SOP Instance UID, transfer syntax UID), or None for a non-DICOM file."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
        return None
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else "") or "")
    sop_uid = str(ds.get("SOPInstanceUID") or "")
    ts = str(meta.get("TransferSyntaxUID") or "") if meta else ""
    if not (sop_class and sop_uid and ts):
        return None
    return sop_class, sop_uid, ts


def send_files(paths: list[Path], node: Node, calling_ae: str = "LLNM", timeout_s: float = 60.0,
               tls_context: ssl.SSLContext | None = None) -> SendReport:
    """Send `paths` to `node` over as many associations as the 128-context limit needs."""
    report = SendReport()
    headers: dict[Path, tuple[str, str, str]] = {}
    for p in paths:
        h = dicom_header(p)
        if h is None:
            report.skipped.append(p)
        else:
            headers[p] = h
    batches: list[list[Path]] = []
    contexts: set[tuple[str, str]] = set()
    for p, (sop_class, _, ts) in headers.items():
        key = (sop_class, ts)
        if not batches or (key not in contexts and len(contexts) >= _MAX_CONTEXTS):
            batches.append([])
            contexts = set()
        contexts.add(key)
        batches[-1].append(p)
    for batch in batches:
        _send_batch(batch, headers, node, calling_ae, timeout_s, tls_context, report)
    return report


def _send_batch(batch: list[Path], headers: dict[Path, tuple[str, str, str]], node: Node, calling_ae: str,
                timeout_s: float, tls_context: ssl.SSLContext | None, report: SendReport) -> None:
    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    for sop_class, ts in sorted({(headers[p][0], headers[p][2]) for p in batch}):
        ae.add_requested_context(sop_class, [ts])
    tls_args = (tls_context, node.host) if tls_context is not None else None
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, evt_handlers=[NODELAY_HANDLER],
                             tls_args=tls_args)
    except (OSError, RuntimeError) as exc:
        for p in batch:
            report.failed[p] = f"association failed: {type(exc).__name__}"
        return
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        for p in batch:
            report.failed[p] = f"association {reason}"
        return
    accepted = {(str(cx.abstract_syntax), str(ts)) for cx in assoc.accepted_contexts
                for ts in (cx.transfer_syntax or [])}
    try:
        for p in batch:
            if not assoc.is_established:
                report.failed[p] = "association lost"
                continue
            if (headers[p][0], headers[p][2]) not in accepted:
                report.failed[p] = "SOP class not accepted"
                report.refused.append(p)
                continue
            try:
                status = assoc.send_c_store(p)
            except (ValueError, RuntimeError, OSError) as exc:  # the type only: messages may quote values
                report.failed[p] = type(exc).__name__
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in _STORED:
                report.sent.append(p)
            else:
                report.failed[p] = f"status 0x{code:04X}" if code >= 0 else "no response"
    finally:
        if assoc.is_established:
            assoc.release()
