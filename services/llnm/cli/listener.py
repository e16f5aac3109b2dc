"""`llnm listener`: the DICOM listener (C-STORE SCP) feeding the Celery queue (needs LLNM_BROKER_URL)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="DICOM port (LLNM_PORT, default 11112)")
    parser.add_argument("--ae-title", help="called AE title (LLNM_AE_TITLE, default LLNM)")


def run(args: argparse.Namespace) -> int:
    from llnm.config import Settings
    from llnm.observability.logs import configure_logging
    from llnm.service import run_listener

    settings = Settings.from_env(port=args.port, ae_title=args.ae_title)
    configure_logging(settings.log_level, settings.log_format)
    return run_listener(settings)
