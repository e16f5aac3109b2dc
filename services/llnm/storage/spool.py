"""The spool: every received instance is on disk (temp file, fsync, rename, fsync dir) before the
listener answers Success.

Layout: `<spool>/<study_uid>/<series_uid>/<sop_instance_uid>.dcm`. File names come from UIDs only after
validating them against the DICOM UI grammar, so no received value can name a path outside the spool.

Duplicate policy (`LLNM_DUPLICATE_POLICY`), for an instance whose SOP Instance UID is already spooled:
- `overwrite` (default): the new copy atomically replaces the old one (a corrected resend wins);
- `discard`: the first copy is kept and the new one dropped; the answer is still Success, because an
  instance with that SOP Instance UID is stored.
"""

from __future__ import annotations

import errno
import fcntl
import filecmp
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from llnm.storage.durable import fsync_dir, fsync_path, write_durably
from llnm.storage.names import is_uid, validate_uid


class OutOfResources(OSError):
    """The spool cannot take the instance: disk below the watermark, full, or a write error."""


@dataclass(frozen=True)
class Stored:
    path: Path
    duplicate: bool  # an instance with this SOP Instance UID was already spooled
    written: bool  # False when the duplicate policy kept the earlier copy
    size: int
    changed: bool = False  # a duplicate whose bytes differ from the copy it replaced (a corrected resend)


#: the spool's lock file (`Spool.receiving` / `Spool.removing`); not a UID, so never taken for a study
LOCK_FILE = ".lock"


def _same_bytes(path: Path, data: bytes | None = None, incoming: Path | None = None) -> bool:
    """Does the spooled file at `path` hold exactly `data` (or the file `incoming`)? Read only for a
    duplicate; an unreadable earlier copy counts as different."""
    try:
        if data is not None:
            return path.stat().st_size == len(data) and path.read_bytes() == data
        return filecmp.cmp(path, incoming, shallow=False)
    except OSError:
        return False


class Spool:
    def __init__(self, root: Path, min_free_mb: int = 1024, duplicate_policy: str = "overwrite") -> None:
        if duplicate_policy not in {"overwrite", "discard"}:
            raise ValueError(f"LLNM_DUPLICATE_POLICY={duplicate_policy!r}: expected 'overwrite' or 'discard'")
        self.root = Path(root)
        self.min_free_bytes = int(min_free_mb) * 1024 * 1024
        self.duplicate_policy = duplicate_policy
        self.root.mkdir(parents=True, exist_ok=True)

    def study_dir(self, study_uid: str) -> Path:
        return self.root / validate_uid(study_uid)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.study_dir(study_uid) / validate_uid(series_uid) / f"{validate_uid(sop_uid)}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_watermark(self, incoming: int = 0) -> None:
        """Raise OutOfResources when storing `incoming` bytes would leave less than the watermark free."""
        if self.free_bytes() - incoming < self.min_free_bytes:
            raise OutOfResources(errno.ENOSPC, "spool disk below the free-space watermark")

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Stored:
        """Write `data` (a DICOM file) durably; return only once it is on disk."""
        path = self.path_for(study_uid, series_uid, sop_uid)
        duplicate = path.exists()
        if duplicate and self.duplicate_policy == "discard":
            return Stored(path, duplicate=True, written=False, size=path.stat().st_size)
        self.check_watermark(len(data))
        changed = duplicate and not _same_bytes(path, data=data)
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent.parent)  # the new folders' entries are durable too
                fsync_dir(self.root)
            write_durably(path, data)
        except OSError as exc:
            raise OutOfResources(exc.errno or errno.EIO, f"spool write failed: {exc.strerror or exc}") from exc
        return Stored(path, duplicate=duplicate, written=True, size=len(data), changed=changed)

    def store_file(self, study_uid: str, series_uid: str, sop_uid: str, incoming: Path,
                   sync: Callable[[], None] | None = None) -> Stored:
        """Move a received file (`<spool>/.incoming/...`) into place durably: fsync it (`sync`, else by
        path), rename it over the instance's path, fsync the folder. A file on another file system is
        copied with `write_durably` instead (read in one go: only for files within the size limit)."""
        path = self.path_for(study_uid, series_uid, sop_uid)
        duplicate = path.exists()
        size = os.stat(incoming).st_size
        if duplicate and self.duplicate_policy == "discard":
            return Stored(path, duplicate=True, written=False, size=path.stat().st_size)
        same_disk = os.stat(incoming).st_dev == os.stat(self.root).st_dev
        self.check_watermark(0 if same_disk else size)  # on the same disk the bytes are already there
        changed = duplicate and not _same_bytes(path, incoming=Path(incoming))
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(path.parent.parent)
                fsync_dir(self.root)
            if same_disk:
                if sync is not None:
                    sync()
                else:
                    fsync_path(incoming)
                os.replace(incoming, path)
                fsync_dir(path.parent)
            else:
                write_durably(path, Path(incoming).read_bytes())
        except OSError as exc:
            raise OutOfResources(exc.errno or errno.EIO, f"spool write failed: {exc.strerror or exc}") from exc
        return Stored(path, duplicate=duplicate, written=True, size=size, changed=changed)

    def instances(self, study_uid: str) -> list[Path]:
        """The spooled files of a study, sorted (series, then SOP Instance UID)."""
        root = self.study_dir(study_uid)
        return sorted(root.glob("*/*.dcm")) if root.is_dir() else []

    def studies(self) -> list[str]:
        out = []
        for p in self.root.iterdir() if self.root.is_dir() else []:
            if p.is_dir() and is_uid(p.name):
                out.append(p.name)
        return sorted(out)

    def last_modified(self, study_uid: str) -> float:
        """Newest mtime of anything in the study's folder (0 when absent)."""
        root = self.study_dir(study_uid)
        times = [p.stat().st_mtime for p in root.rglob("*")] if root.is_dir() else []
        return max(times, default=root.stat().st_mtime if root.is_dir() else 0.0)

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Held (shared) by the listener from an instance's spool write to its completion record, so that
        retention (`removing`) never deletes an instance between the two: it sees the study reopened."""
        with self._flock(fcntl.LOCK_SH):
            yield

    @contextmanager
    def removing(self) -> Iterator[None]:
        """Held (exclusive) by retention while it checks a study again and removes it."""
        with self._flock(fcntl.LOCK_EX):
            yield

    @contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        """flock on the spool's lock file. A file system without locks (ENOLCK, EOPNOTSUPP) goes on
        unlocked: that only reopens retention's narrow race, where refusing every instance would stop intake."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, mode)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)

    def usage_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.dcm") if p.is_file())
