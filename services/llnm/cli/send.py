"""`llnm send PATH... --to AE@host:port`: C-STORE DICOM files (folders recursively; non-DICOM skipped)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="DICOM files or folders")
    parser.add_argument("--to", required=True, help="destination AE@host:port (append ;tls for DICOM TLS)")
    parser.add_argument("--aet", default="LLNMSCU", help="our calling AE title (default LLNMSCU)")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    parser.add_argument("--tls-ca", default="", help="CA file to verify the destination's certificate")
    parser.add_argument("--tls-cert", default="", help="our client certificate (if the peer requires one)")
    parser.add_argument("--tls-key", default="", help="its key")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llnm.dimse import client_tls_context, parse_node
    from llnm.worker.sender import send_files

    node = parse_node(args.to)
    files: list[Path] = []
    for raw in args.paths:
        p = Path(raw)
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    tls = client_tls_context(args.tls_ca, args.tls_cert, args.tls_key) if node.tls else None
    report = send_files(files, node, args.aet, args.timeout, tls)
    for path, reason in sorted(report.failed.items()):
        print(f"FAILED {path}: {reason}")
    print(f"sent {len(report.sent)}, failed {len(report.failed)}, skipped {len(report.skipped)} non-DICOM "
          f"to {node}")
    return 0 if report.ok else 1
