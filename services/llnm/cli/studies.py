"""`llnm studies [--failed] [--state S]`: the studies the service knows, newest first."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--failed", action="store_true", help="only the dead letter (state failed)")
    parser.add_argument("--state", action="append", help="only studies in this state (repeatable)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from llnm.audit import FAILED, AuditTrail
    from llnm.config import Settings

    audit = AuditTrail.for_data_dir(Settings.from_env().data_dir)
    states = tuple(args.state or ()) + ((FAILED,) if args.failed else ())
    rows = audit.studies(states or None, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["updated_at"]))
        prob = f"P={r['probability']:.3f}" if r["probability"] is not None else ""
        error = f"error: {r['error']}" if r["error"] else ""
        print(f"{ts}Z  {r['state']:<10} {r['study_uid']}  {r['calling_ae'] or '-'}  {prob} {error}".rstrip())
    print(f"{len(rows)} studies")
    return 0
