"""`llnm worker`: the Celery worker processing completed studies (needs LLNM_BROKER_URL)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, help="studies at once (LLNM_WORKER_CONCURRENCY)")


def run(args: argparse.Namespace) -> int:
    from llnm.config import Settings
    from llnm.observability.logs import configure_logging
    from llnm.service import run_worker

    settings = Settings.from_env(worker_concurrency=args.concurrency)
    configure_logging(settings.log_level, settings.log_format)
    return run_worker(settings)
