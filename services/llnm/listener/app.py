"""The DICOM listener: a pynetdicom SCP (C-ECHO, C-STORE) in front of the spool and the completion timers.

Handlers stay small: check, write durably, record, answer. Success (0x0000) is answered only after the
instance is in the spool and recorded for completion; a full disk, a disk below the watermark, an instance
over the size limit or a write error is answered 0xA700 (Out of Resources) and the sender keeps the instance.

Memory per association is bounded: each data set is received into a file as it arrives
(`llnm.listener.incoming`), never held whole in memory, PDUs are capped at `MAX_PDU_BYTES`, and the command
set and what else a peer may send inside an association are bounded (`llnm.listener.guard`). The pynetdicom
internals this relies on are in one place, `llnm.listener.pynetdicom_adapter`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.dimse import NODELAY_HANDLER, ReloadingTLSContext, server_tls_context
from llnm.listener import pynetdicom_adapter as adapter
from llnm.listener.access import OTHER, AccessPolicy, parse_access
from llnm.listener.completion import CompletionTracker, Enqueue
from llnm.listener.dataset_check import MalformedDataSet, scan_top_level
from llnm.listener.guard import BadConnectionLog, PeerGuard
from llnm.listener.incoming import IncomingFiles
from llnm.observability import metrics
from llnm.observability.health import Heartbeat
from llnm.observability.logs import get_logger
from llnm.storage.durable import remove_stale_temp_files
from llnm.storage.names import InvalidUID, validate_uid
from llnm.storage.spool import OutOfResources, Spool

log = get_logger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000

#: The largest PDU we accept (and advertise as our maximum length received). A PDU is read whole into
#: memory by pynetdicom, so this bounds an association's memory; a peer announcing a longer one is
#: disconnected. 1 MiB keeps round trips few (dcmtk's storescp takes 128 KiB).
MAX_PDU_BYTES = 1024 * 1024

#: Liveness (`/healthz`): the accept loop passes every 0.5 s (socketserver's poll); a completion pass
#: can wait on the broker (a few tries of a few seconds per study while Redis is away), so it gets longer.
ACCEPT_LOOP_MAX_SILENCE_S = 60.0
COMPLETION_LOOP_MAX_SILENCE_S = 300.0

#: Storage classes accepted: ultrasound, secondary capture, structured reports, and SEG/KOS (so a PACS
#: routing a whole study, our own results included, is never refused; those are stored and ignored).
ACCEPTED_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
)

#: Returns "image", "report", "own_output" or "ignored:<reason>" for a received dataset.
Classify = Callable[[Dataset], str]


def accepted_transfer_syntaxes() -> list[str]:
    """Every transfer syntax the DICOM reader decodes: a sender proposing several picks one we read."""
    from llnm.dicom.reading import SUPPORTED_TRANSFER_SYNTAXES

    return list(SUPPORTED_TRANSFER_SYNTAXES)


def default_classify() -> Classify:
    from llnm.dicom.classify import classify_instance

    return classify_instance


class Listener:
    def __init__(self, settings: Settings, enqueue: Enqueue, classify: Classify | None = None,
                 audit: AuditTrail | None = None, completion_interval_s: float = 0.5) -> None:
        self.settings = settings
        self.enqueue = enqueue
        self.classify = classify or default_classify()
        self.audit = audit or AuditTrail.for_data_dir(settings.data_dir)
        self.spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
        self.incoming = IncomingFiles(self.spool.root, settings.max_instance_mb * 1024 * 1024)
        self.policy: AccessPolicy = parse_access(settings.allowed_aes, settings.series_idle_s,
                                                 settings.study_idle_s)
        self.tracker = CompletionTracker(self.audit, self.policy)
        metrics.init_listener_series([*self.policy.entries, OTHER])  # the first refusal counts in increase()
        self.completion_interval_s = completion_interval_s
        self.bad_connections = BadConnectionLog()  # one line per bad connection, rate-limited (guard)
        self._stop = threading.Event()
        self._server = None
        self._thread: threading.Thread | None = None
        self._tls: ReloadingTLSContext | None = None
        #: beaten by the accept loop and the completion loop; `/healthz` fails when one falls silent
        self.heartbeats = {"accept loop": Heartbeat(ACCEPT_LOOP_MAX_SILENCE_S),
                           "completion loop": Heartbeat(COMPLETION_LOOP_MAX_SILENCE_S)}
        self.ae = self.build_ae()

    # -- the AE ---------------------------------------------------------------------------------------
    def build_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.require_called_aet = s.require_called_ae
        ae.network_timeout = s.network_timeout_s
        ae.acse_timeout = s.network_timeout_s
        ae.dimse_timeout = s.network_timeout_s
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.add_supported_context(Verification)
        syntaxes = accepted_transfer_syntaxes()
        for uid in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        adapter.association.receive_into_files(ae, self.incoming)
        return ae

    def handlers(self) -> list:
        return [
            NODELAY_HANDLER,
            (evt.EVT_CONN_OPEN, self.bound_reads),
            (evt.EVT_CONN_OPEN, self.guard_connection),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self._count_association),
            (evt.EVT_REJECTED, self._count_association),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_CONN_CLOSE, self.drop_partial_instance),
            (evt.EVT_CONN_CLOSE, self.report_connection),
        ]

    def start(self) -> "Listener":
        s = self.settings
        removed = remove_stale_temp_files(self.spool.root) + self.incoming.sweep()
        if removed:
            log.info("removed temp files of interrupted writes", count=removed)
        if s.tls_cert:  # re-read when the files change (the sweep loop looks): rotation without a restart
            self._tls = ReloadingTLSContext(lambda: server_tls_context(s.tls_cert, s.tls_key, s.tls_ca),
                                            s.tls_cert, s.tls_key, s.tls_ca)
        ssl_context = self._tls.current() if self._tls else None
        # not ae.start_server: silent sockets and TLS handshakes wait outside the association slots and the
        # accept loop, for at most the association request timeout (llnm.listener.pynetdicom_adapter.accept)
        self._server = adapter.accept.start_server(self.ae, (s.bind_address, s.port), self.handlers(), ssl_context,
                                    request_timeout_s=min(s.association_request_timeout_s, s.network_timeout_s),
                                    max_pending=s.max_pending_connections, lines=self.bad_connections)
        _beat_each_pass(self._server, self.heartbeats["accept loop"])
        self._thread = threading.Thread(target=self._run, name="llnm-completion", daemon=True)
        self._thread.start()
        log.info("listener up", called_ae=s.ae_title, port=self.port,
                 reason="tls" if ssl_context else "plain")
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.settings.port

    def _run(self) -> None:
        """The completion loop, and every few network timeouts a sweep of temp files a crash left."""
        sweeper = threading.Thread(target=self._sweep_loop, name="llnm-sweep", daemon=True)
        sweeper.start()
        beat = self.heartbeats["completion loop"].beat

        def enqueue(study_uid: str) -> str | None:  # a pass waiting on the broker is still a live loop
            beat()
            return self.enqueue(study_uid)

        self.tracker.run(enqueue, self._stop, self.completion_interval_s, on_pass=beat)

    def _sweep_loop(self) -> None:
        age = max(60.0, 2 * self.settings.network_timeout_s)  # no live write is that old
        while not self._stop.wait(age / 2):
            try:
                removed = remove_stale_temp_files(self.spool.root, age) + self.incoming.sweep(age)
                if removed:
                    log.info("removed temp files of interrupted writes", count=removed)
                self.tracker.forget_received(set(self.spool.studies()))
                self.bad_connections.flush()
                if self._tls is not None and self._server is not None:
                    self._server.ssl_context = self._tls.current()  # rotated certificate files
            except Exception:
                log.exception("temp file sweep failed")

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- handlers -------------------------------------------------------------------------------------
    def bound_reads(self, event: evt.Event) -> None:
        """Time out a read that stalls inside a PDU. pynetdicom reads a PDU's announced length with a
        blocking recv on a socket without timeout, so a peer that sends part of a PDU and goes quiet
        (a truncated or oversized PDU, a slowloris) would hold its thread and association slot forever;
        its idle timer cannot interrupt that read."""
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.settimeout(self.settings.network_timeout_s)
        adapter.association.bound_pdu_length(event.assoc.dul.socket, MAX_PDU_BYTES)

    def drop_partial_instance(self, event: evt.Event) -> None:
        """An association that ended mid-instance (abort, lost connection) leaves no file behind."""
        removed = self.incoming.association_closed(event.assoc)
        if removed:
            log.info("association ended mid-instance: partial data removed", count=removed,
                     calling_ae=str(event.assoc.requestor.ae_title).strip())

    def guard_connection(self, event: evt.Event) -> None:
        """Bound what the peer may send inside the association (command set, data before a command,
        unaccepted contexts: `llnm.listener.guard`), and fold pynetdicom's error lines about this
        connection into one line of ours."""
        assoc = event.assoc
        peer = str(event.address[0]) if isinstance(event.address, tuple) else str(event.address)
        adapter.association.watch(assoc, PeerGuard(peer, self.bad_connections,
                                     calling_ae=lambda: str(assoc.requestor.ae_title).strip()))

    def report_connection(self, event: evt.Event) -> None:
        """A connection pynetdicom closed after errors gets its one line now."""
        guard = adapter.association.guard_of(event.assoc)
        if guard is not None:
            guard.closed()

    def handle_requested(self, event: evt.Event) -> None:
        """Reject callers not on the allow-list (A-ASSOCIATE-RJ: calling AE title not recognised)."""
        rq = event.assoc.requestor
        calling = str(rq.primitive.calling_ae_title).strip()
        address = str(rq.address)
        label = self.policy.metric_label(calling)
        if not self.policy.allows(calling, address):
            metrics.ASSOCIATIONS.labels(calling_ae=label, result="rejected").inc()
            metrics.CONNECTIONS_REFUSED.labels(reason="calling_ae_not_allowed").inc()
            log.warning("association rejected: calling AE not allowed", calling_ae=calling, peer=address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()  # as pynetdicom's own rejections do: returns once the A-ASSOCIATE-RJ is out

    def _count_association(self, event: evt.Event) -> None:
        """pynetdicom's own decisions (called AE title, association limit) and the accepted ones."""
        calling = str(event.assoc.requestor.ae_title).strip()
        result = "rejected" if event.event == evt.EVT_REJECTED else "accepted"
        metrics.ASSOCIATIONS.labels(calling_ae=self.policy.metric_label(calling), result=result).inc()
        if result == "rejected":
            reason = adapter.accept.rejection_reason(event.assoc)
            metrics.CONNECTIONS_REFUSED.labels(reason=reason).inc()
            log.warning("association rejected", reason=reason, calling_ae=calling,
                        called_ae=str(event.assoc.requestor.primitive.called_ae_title).strip(),
                        peer=str(event.assoc.requestor.address))

    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def handle_store(self, event: evt.Event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        label = self.policy.metric_label(calling)
        status, outcome = self._store(event, calling)
        metrics.INSTANCES.labels(calling_ae=label, status=outcome).inc()
        return status

    def _store(self, event: evt.Event, calling: str) -> tuple[int, str]:
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        incoming = self.incoming.take(event.dataset_path, event.assoc)
        if incoming is None:  # not received by our file hook: nothing we could store durably
            log.error("instance refused: no received data set file", calling_ae=calling)
            return OUT_OF_RESOURCES, "error"
        if incoming.oversized:
            log.warning("instance over the size limit", calling_ae=calling, bytes=incoming.size)
            return OUT_OF_RESOURCES, "out_of_resources"
        if incoming.error is not None:
            log.error("instance refused: could not write it while receiving", calling_ae=calling,
                      error=os.strerror(incoming.error))
            return OUT_OF_RESOURCES, "out_of_resources"
        try:
            incoming.file.flush()
            # First the whole file's top level (pixel data skipped, a deflated set inflated only up to the
            # size limit): one unambiguous reading, so the UIDs validated here are the ones the worker uses.
            full = scan_top_level(incoming.name, self.settings.max_instance_mb * 1024 * 1024)
            ds = dcmread(incoming.name, stop_before_pixels=True)
            study_uid = validate_uid(ds.get("StudyInstanceUID"))
            series_uid = validate_uid(ds.get("SeriesInstanceUID"))
            sop_uid = validate_uid(sop_uid)
            if str(ds.get("SOPInstanceUID", "")).strip() != sop_uid:
                raise InvalidUID("dataset SOP Instance UID differs from the request's")
            read = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_uid}
            for keyword, uid in read.items():
                if full.uids.get(keyword, "").strip() != uid:
                    raise MalformedDataSet("header and full read disagree", keyword)
        except MalformedDataSet as exc:  # names the attribute, never its value
            log.warning("instance refused: ambiguous data set", calling_ae=calling, reason=exc.reason,
                        error=exc.keyword)
            return CANNOT_UNDERSTAND, "invalid"
        except Exception as exc:  # an undecodable header is the sender's fault: refuse it, never crash
            log.warning("instance refused: cannot read its UIDs", calling_ae=calling, error=type(exc).__name__)
            return CANNOT_UNDERSTAND, "invalid"
        if self.tracker.instances(study_uid) >= self.settings.max_instances_per_study:
            log.warning("study over the instance limit", study_uid=study_uid, calling_ae=calling)
            return OUT_OF_RESOURCES, "out_of_resources"
        try:
            kind = self.classify(ds)
        except Exception as exc:
            kind = f"ignored:unclassifiable ({type(exc).__name__})"
        try:
            with self.spool.receiving():  # retention waits: it never removes what is not yet recorded
                stored = self.spool.store_file(study_uid, series_uid, sop_uid, Path(incoming.name), incoming.sync)
                self.tracker.instance_received(study_uid, series_uid, calling, kind, duplicate=stored.duplicate,
                                               sop_uid=sop_uid, changed=stored.changed)
        except OutOfResources as exc:
            log.error("instance refused: spool cannot store it", study_uid=study_uid, sop_instance_uid=sop_uid,
                      calling_ae=calling, error=exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES, "out_of_resources"
        except Exception as exc:  # bookkeeping failed: refuse, so the sender sends it again
            log.exception("instance refused: could not record it", study_uid=study_uid,
                          sop_instance_uid=sop_uid, error=type(exc).__name__)
            return OUT_OF_RESOURCES, "error"
        finally:
            incoming.close()
        metrics.RECEIVED_BYTES.labels(calling_ae=self.policy.metric_label(calling)).inc(stored.size)
        log.debug("instance stored", study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_uid,
                  calling_ae=calling, reason=kind, bytes=stored.size)
        return SUCCESS, "duplicate" if stored.duplicate else "stored"

    def refresh_gauges(self) -> None:
        """Called on each /metrics scrape."""
        metrics.STUDIES_WAITING.set(self.tracker.waiting())
        metrics.SPOOL_FREE_BYTES.set(self.spool.free_bytes())
        metrics.SPOOL_BYTES.set(self.spool.usage_bytes())


def _beat_each_pass(server: object, heartbeat: Heartbeat) -> None:
    """socketserver's serve_forever calls `service_actions()` after every poll (0.5 s) and request: beat
    there, keeping pynetdicom's own service_actions."""
    original = server.service_actions  # type: ignore[attr-defined]

    def service_actions() -> None:
        heartbeat.beat()
        original()

    server.service_actions = service_actions  # type: ignore[attr-defined]
