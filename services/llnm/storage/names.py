"""UIDs as folder and file names: a received value names a path only after it passed the DICOM UI grammar,
so no peer can name a path outside the storage room."""

from __future__ import annotations

import re

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUID(ValueError):
    """A UID that is not a valid DICOM UI value (and so never becomes a file name)."""


def validate_uid(uid: object) -> str:
    """Return `uid` stripped if it is a valid DICOM UID (digits and dots, at most 64 chars).

    The error names no value: what a peer put in a UID field (a path, a name) must not reach a log, the
    audit trail or the CLI through an exception message."""
    text = str(uid or "").strip().rstrip("\x00").strip()
    if not text or len(text) > 64 or not _UID.match(text):
        raise InvalidUID(f"not a valid DICOM UID ({len(text)} characters)" if text else "no UID (empty)")
    return text


def is_uid(text: str) -> bool:
    """Is `text` a valid DICOM UID as a name (e.g. a folder found on disk)?"""
    return len(text) <= 64 and bool(_UID.match(text))
