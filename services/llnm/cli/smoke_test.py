"""`llnm smoke-test --to AE@host:port --metrics URL [--metrics URL...]`: prove an installation end to end.

The Helm chart's `helm test` hook runs it from the llnm image; an operator can run it from any machine
that reaches the listener and the workers' metrics ports. Steps, each failing with a line that says
what to fix:

1. C-ECHO the listener with our calling AE title (rejected: that AE title is not in LLNM_ALLOWED_AES).
2. Read `llnm_studies_processed_total` and `llnm_studies_dead_lettered_total` from every worker's /metrics.
3. Write one synthetic study (`llnm phantom`, patient name PHANTOM^..., a fresh seed so its UIDs are new).
4. C-STORE it to the listener.
5. Wait until a worker counts one more study processed and delivered (success), or one more dead
   letter (failure: `llnm status <study>` in the listener's container says why), or the timeout.

The phantom's results go to LLNM_DESTINATIONS like any study's: run it before the PACS routes real
studies, or remove the PHANTOM study from the PACS afterwards. Counters are per worker process, so
another study finishing meanwhile also counts: it proves the path works, not this study's result.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROCESSED = "llnm_studies_processed"
DEAD_LETTERED = "llnm_studies_dead_lettered"
VERIFICATION = "1.2.840.10008.1.1"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, help="the listener, AE@host:port (append ;tls for DICOM TLS)")
    parser.add_argument("--aet", default="LLNMTEST", help="our calling AE title (default LLNMTEST): it must be "
                                                          "allowed by the listener's LLNM_ALLOWED_AES")
    parser.add_argument("--metrics", action="append", required=True, metavar="URL",
                        help="base URL of a worker's metrics port, e.g. http://llnm-worker-metrics:9111 "
                             "(repeat for each worker process)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result")
    parser.add_argument("--network-timeout", type=float, default=30.0, help="DICOM network timeout in seconds")
    parser.add_argument("--seed", type=int, default=None, help="phantom seed (default: from the clock)")
    parser.add_argument("--tls-ca", default="", help="CA file to verify the listener's certificate")
    parser.add_argument("--tls-cert", default="", help="our client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", help="its key")


def echo(host: str, port: int, called_ae: str, calling_ae: str, timeout_s: float,
         tls_context: ssl.SSLContext | None) -> str:
    """C-ECHO: "" on success, else why not (rejected, aborted, no answer, the status)."""
    from pynetdicom import AE

    from llnm.dimse import NODELAY_HANDLER

    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    ae.add_requested_context(VERIFICATION)
    tls_args = (tls_context, host) if tls_context is not None else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[NODELAY_HANDLER], tls_args=tls_args)
    except (OSError, RuntimeError) as exc:
        return f"cannot connect ({type(exc).__name__})"
    if not assoc.is_established:
        if assoc.is_rejected:
            return f"association rejected: is {calling_ae} in the listener's LLNM_ALLOWED_AES, and is " \
                   f"{called_ae} its LLNM_AE_TITLE?"
        return "association aborted or not answered (TLS settings? the listener's log says more)"
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    return "" if code == 0 else f"C-ECHO status {code:#06x}" if code >= 0 else "C-ECHO: no response"


def read_counters(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """The processed and dead-lettered counters of one worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    out = {PROCESSED: 0.0, DEAD_LETTERED: 0.0}
    for family in text_string_to_metric_families(text):
        if family.name in out:
            out[family.name] = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out


def run(args: argparse.Namespace) -> int:
    from llnm.dimse import client_tls_context, parse_node
    from llnm.phantom import write_phantom_set
    from llnm.worker.sender import send_files

    def fail(message: str) -> int:
        print(f"FAILED: {message}", file=sys.stderr)
        return 1

    node = parse_node(args.to)
    tls = client_tls_context(args.tls_ca, args.tls_cert, args.tls_key) if node.tls else None
    why = echo(node.host, node.port, node.ae_title, args.aet, args.network_timeout, tls)
    if why:
        return fail(f"C-ECHO {node}: {why}")
    print(f"C-ECHO {node}: ok")

    try:
        baseline = {url: read_counters(url) for url in args.metrics}
    except OSError as exc:
        return fail(f"a worker's metrics cannot be read ({type(exc).__name__}): are the workers running?")

    seed = args.seed if args.seed is not None else int(time.time())
    with tempfile.TemporaryDirectory(prefix="llnm-smoke-") as tmp:
        out = write_phantom_set(Path(tmp) / "phantom", 1, seed, rows=256, cols=320)
        files = sorted(p for p in Path(out).rglob("*.dcm") if "truth" not in p.parts)
        study_uid = files[0].parent.name
        report = send_files(files, node, args.aet, args.network_timeout, tls)
    if not report.sent or not report.ok:
        reasons = sorted(set(report.failed.values())) or ["nothing sent"]
        return fail(f"C-STORE of the phantom study to {node}: {', '.join(reasons)}")
    print(f"sent phantom study {study_uid} ({len(report.sent)} instances); waiting for its result")

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(2.0)
        for url in args.metrics:
            try:
                now = read_counters(url)
            except OSError:
                continue  # a worker restarting: look again
            base = baseline[url]
            if now[PROCESSED] < base[PROCESSED] or now[DEAD_LETTERED] < base[DEAD_LETTERED]:
                baseline[url] = now  # the worker restarted: its counters began again
                continue
            if now[DEAD_LETTERED] > base[DEAD_LETTERED]:
                return fail(f"a study went to the dead letter (`llnm status {study_uid}` in the listener's "
                            f"container says why)")
            if now[PROCESSED] > base[PROCESSED]:
                print(f"ok: a worker processed and delivered a study ({url}); phantom study {study_uid}")
                return 0
    return fail(f"no study processed within {args.timeout:.0f} s (`llnm status {study_uid}` in the listener's "
                f"container shows where it stands)")
