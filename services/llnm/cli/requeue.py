"""`llnm requeue STUDY_UID... | --all-failed`: run failed (or any) studies again from their spooled instances."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_uids", nargs="*", help="Study Instance UIDs")
    parser.add_argument("--all-failed", action="store_true", help="every study in the dead letter")


def run(args: argparse.Namespace) -> int:
    from llnm.config import Settings
    from llnm.worker.requeue import requeue

    if not args.study_uids and not args.all_failed:
        print("give STUDY_UIDs or --all-failed")
        return 2
    settings = Settings.from_env()
    done, errors = requeue(settings, args.study_uids, args.all_failed)
    for uid in done:
        print(f"queued {uid}")
    for uid, reason in errors.items():
        print(f"NOT queued {uid}: {reason}")
    return 0 if not errors else 1
