"""`llnm status STUDY_UID`: the audit trail of one study (state, result, every event)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_uid")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from llnm.audit import AuditTrail
    from llnm.config import Settings

    audit = AuditTrail.for_data_dir(Settings.from_env().data_dir)
    study = audit.study(args.study_uid)
    events = audit.events(args.study_uid)
    if study is None and not events:
        print(f"unknown study {args.study_uid}")
        return 1
    if args.json:
        print(json.dumps({"study": study, "events": events}, indent=2, default=str))
        return 0
    if study:
        print(f"study {study['study_uid']}: {study['state']}  (from {study['calling_ae']}, "
              f"{study['instances']} instances, attempts {study['attempts']}/{study['send_attempts']} "
              f"process/send)")
        if study["probability"] is not None:
            print(f"  P(LLNM) = {study['probability']:.4f}, risk level {study['risk_level']}")
        if study["error"]:
            print(f"  error: {study['error']}")
    for e in events:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.pop("ts")))
        name = e.pop("event")
        detail = " ".join(f"{k}={v}" for k, v in e.items())
        print(f"  {ts}Z  {name}  {detail}".rstrip())
    return 0
