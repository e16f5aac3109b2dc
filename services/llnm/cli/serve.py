"""`llnm serve`: the embedded default. Listener + in-process worker + ONNX Runtime + local results folder
(+ C-STORE to LLNM_DESTINATIONS when set). No Redis, Triton or PACS needed."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="DICOM port (LLNM_PORT, default 11112)")
    parser.add_argument("--ae-title", help="called AE title (LLNM_AE_TITLE, default LLNM)")
    parser.add_argument("--data-dir", help="spool, outbox, audit and results (LLNM_DATA_DIR, default var/)")
    parser.add_argument("--metrics-port", type=int, help="/metrics, /healthz, /readyz (LLNM_METRICS_PORT)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llnm.config import Settings
    from llnm.observability.logs import configure_logging
    from llnm.service import run_embedded

    settings = Settings.from_env(port=args.port, ae_title=args.ae_title, metrics_port=args.metrics_port,
                                 data_dir=Path(args.data_dir) if args.data_dir else None)
    configure_logging(settings.log_level, settings.log_format)
    return run_embedded(settings)
