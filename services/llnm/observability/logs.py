"""Structured JSON logs that carry UIDs (and console user names), never patient names, IDs, birth dates or
pixel data.

Use `get_logger(__name__)` and pass context as keyword fields:
`log.info("instance stored", study_uid=..., sop_instance_uid=..., calling_ae=...)`.
Only the keys in ALLOWED_FIELDS are written; anything else is dropped, so a patient name passed by
mistake never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ALLOWED_FIELDS = frozenset({
    "study_uid", "series_uid", "sop_instance_uid", "sop_class_uid", "transfer_syntax", "task_id",
    "calling_ae", "called_ae", "peer", "destination", "status", "attempt", "duration_s", "stage",
    "path", "count", "instances", "studies", "bytes", "error", "reason", "model", "version",
    "backend", "probability", "risk_level", "port", "url", "queue", "outcome", "views", "frames",
    "seconds", "retries", "epoch", "metric", "value", "preset", "worker", "objects",
    # the console's audit lines (who did what): a console user name is [A-Za-z0-9._@-] (users file, or the
    # identity provider's name cut to that), a role one of four, an action, source and kind fixed words
    # of the code, ok a boolean, address the bind address, positives and skipped counts
    "user", "role", "action", "ok", "kind", "source", "address", "positives", "skipped",
})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "llnm_fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in getattr(record, "llnm_fields", {}).items())
        return f"{record.levelname[0]} {record.name}: {record.getMessage()} {extra}".rstrip()


class StructuredLogger:
    """A thin wrapper so every call site passes fields the same way."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, msg: str, exc_info: bool = False, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            safe = {k: v for k, v in fields.items() if k in ALLOWED_FIELDS}
            self._logger.log(level, msg, exc_info=exc_info, extra={"llnm_fields": safe})

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, **fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, exc_info=True, **fields)


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(name))


class _StandardError(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record, not the stream of the time it was
    made: a process that redirects or replaces stderr (a test runner, a daemon wrapper) never gets
    "I/O operation on closed file" tracebacks from our logging."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler sets it in __init__ and setStream
        pass


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Call once at process start (the CLI does). Library loggers (pynetdicom) are kept at WARNING
    because their debug output can include dataset contents."""
    handler = _StandardError()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pynetdicom", "celery", "kombu", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
