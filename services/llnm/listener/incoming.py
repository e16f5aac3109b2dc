"""Receiving a C-STORE data set into a file, not into memory.

pynetdicom (with `_config.STORE_RECV_CHUNKED_DATASET`) writes each received data set fragment by fragment
into a file it opens with `tempfile.NamedTemporaryFile`, and hands the handler its path. We give it our own
file instead (`IncomingFiles.open`, through `llnm.listener.pynetdicom_adapter.association.receive_into_files`), so that:
- the file is in the spool's own folder `<spool>/.incoming/` (the same file system: storing it is a rename,
  not a copy; and the pod's `/tmp` is an in-memory volume in Kubernetes, which would undo the point);
- it stops growing past `LLNM_MAX_INSTANCE_MB` (the rest of the instance is read and dropped, and the
  handler answers Out of Resources), so neither memory nor disk grows with what a peer sends;
- a full disk while receiving (ENOSPC) is remembered and answered Out of Resources instead of breaking
  the association;
- a file left by an association that ended mid-instance (abort, crash) is removed when the connection
  closes, and at start-up.

Memory per association is then one PDU (bounded by `Listener.bound_reads`) plus the command set (bounded by
`llnm.listener.guard`).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

INCOMING = ".incoming"


class IncomingFile:
    """The file pynetdicom writes one data set into (it uses `.write`, `.file.flush()`, `.close()`, `.name`)."""

    def __init__(self, directory: Path, limit_bytes: int) -> None:
        fd, self.name = tempfile.mkstemp(prefix=".in-", suffix=".dcm", dir=directory)
        self.file = os.fdopen(fd, "wb")
        self.limit_bytes = limit_bytes
        self.size = 0
        self.oversized = False
        self.error: int | None = None  # errno of a failed write (ENOSPC ...)

    @property
    def refused(self) -> bool:
        return self.oversized or self.error is not None

    def write(self, data: bytes) -> int:
        """Write, or count and drop once the instance is over the limit or the disk failed."""
        self.size += len(data)
        if self.refused:
            return len(data)
        if self.size > self.limit_bytes:
            self.oversized = True
            self._truncate()
            return len(data)
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc.errno or errno.EIO
            self._truncate()
            return len(data)

    def _truncate(self) -> None:
        """Give the space back at once; what follows is dropped."""
        try:
            self.file.truncate(0)
            self.file.seek(0)
        except (OSError, ValueError):
            pass

    def sync(self) -> None:
        """Everything written is on disk (before Success is answered)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.name)
        except FileNotFoundError:
            pass


class IncomingFiles:
    """The incoming folder of one listener, and the files its associations are writing now."""

    def __init__(self, spool_root: Path, limit_bytes: int) -> None:
        self.directory = Path(spool_root) / INCOMING
        self.directory.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._by_path: dict[str, IncomingFile] = {}
        self._by_assoc: dict[int, set[str]] = {}

    def open(self, assoc: Any) -> IncomingFile:
        f = IncomingFile(self.directory, self.limit_bytes)
        with self._lock:
            self._by_path[f.name] = f
            self._by_assoc.setdefault(id(assoc), set()).add(f.name)
        return f

    def take(self, path: Path | str, assoc: Any) -> IncomingFile | None:
        """The file of a complete data set, now owned by the C-STORE handler."""
        with self._lock:
            f = self._by_path.pop(str(path), None)
            self._by_assoc.get(id(assoc), set()).discard(str(path))
        return f

    def association_closed(self, assoc: Any) -> int:
        """Remove what an association left half-written (it ended mid-instance); returns how many."""
        with self._lock:
            names = self._by_assoc.pop(id(assoc), set())
            files = [self._by_path.pop(n) for n in names if n in self._by_path]
        for f in files:
            f.discard()
        return len(files)

    def sweep(self, older_than_s: float = 0.0) -> int:
        """Remove files no association is writing (left by a crash); returns how many."""
        now = time.time()
        with self._lock:
            active = set(self._by_path)
        count = 0
        for p in self.directory.glob(".in-*.dcm"):
            if str(p) in active:
                continue
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    p.unlink()
                    count += 1
            except FileNotFoundError:
                pass
        return count
