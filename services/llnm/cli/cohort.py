"""`llnm cohort export --out DIR`: the studies with a pathology outcome (recorded in the console), in the
training layout `llnm train --data DIR` reads (labels.csv, views.csv, images, gland and nodule masks)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write the cohort in the training layout")
    export.add_argument("--out", required=True, help="output folder (created)")
    export.add_argument("--data-dir", help="LLNM_DATA_DIR")
    export.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from llnm.audit import AuditTrail
    from llnm.config import Settings
    from llnm.console.cohort import export
    from llnm.observability.logs import configure_logging

    settings = Settings.from_env(data_dir=Path(args.data_dir) if args.data_dir else None)
    configure_logging(settings.log_level, settings.log_format)
    report = export(settings, AuditTrail.for_data_dir(settings.data_dir), Path(args.out))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['studies']} studies ({report['positives']} with LLNM), {report['views']} views in {args.out}")
        for uid, why in report["skipped"].items():
            print(f"left out {uid}: {why}")
    return 0 if report["studies"] else 1
