"""Durable writes: a file is whole on disk (temp file in the same folder, fsync, rename, fsync the folder)
before anyone is told it is stored; crash leftovers are temp files that are removed later."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def write_durably(path: Path, data: bytes) -> None:
    """tmp file in the same folder, write, fsync, rename over `path`, fsync the folder."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(root: Path, older_than_s: float = 3600.0) -> int:
    """Temp files left by a crash mid-write (never answered Success): a write takes seconds, so the
    listener removes those older than a few network timeouts, at start-up and then periodically."""
    now = time.time()
    count = 0
    for p in Path(root).rglob(".tmp-*.part"):
        try:
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()
                count += 1
        except FileNotFoundError:
            pass
    return count
