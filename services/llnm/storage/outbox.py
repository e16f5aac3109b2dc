"""The outbox: result objects on disk until every destination has stored them.

Layout: `<outbox>/<study_uid>/<sop_instance_uid>.dcm`, the study's current result key in
`<outbox>/<study_uid>/.result-key`, and for each destination that stored an object a marker
`<outbox>/<study_uid>/.sent/<destination key>/<sop_instance_uid>` holding the result key it was sent
with, written durably right after the destination answered Success.

A re-run of the study (a task killed mid-study runs again) writes the same objects under the same
deterministic UIDs and the same result key (a hash of the result summary), and skips those already
delivered, so each object reaches each destination once (a kill between the destination's Success and
the marker re-sends that one object under the same SOP Instance UID, which a PACS stores once). When
the result itself changed (e.g. a report arrived after the images), the key differs and everything is
sent again.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from llnm.storage.durable import fsync_dir, write_durably
from llnm.storage.names import validate_uid

_KEY = re.compile(r"[^A-Za-z0-9.\-]")


class Destination(Protocol):
    """Where objects go, as far as the outbox cares: a stable label (llnm.worker.destinations)."""

    label: str


def destination_key(node: Destination) -> str:
    return _KEY.sub("_", node.label)


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def study_dir(self, study_uid: str) -> Path:
        return self.root / validate_uid(study_uid)

    def _marker(self, study_uid: str, node: Destination, sop_uid: str) -> Path:
        return self.study_dir(study_uid) / ".sent" / destination_key(node) / validate_uid(sop_uid)

    def _key_path(self, study_uid: str) -> Path:
        return self.study_dir(study_uid) / ".result-key"

    def result_key(self, study_uid: str) -> str:
        path = self._key_path(study_uid)
        return path.read_text() if path.is_file() else ""

    def _sent(self, study_uid: str, node: Destination, sop_uid: str, key: str) -> bool:
        marker = self._marker(study_uid, node, sop_uid)
        return marker.is_file() and marker.read_text() == key

    def add(self, study_uid: str, datasets: list[Dataset], nodes: list[Destination], result_key: str = "") -> int:
        """Write the objects not yet delivered (with this result) to every node; returns how many.
        Objects of an earlier, different result (other UIDs) are dropped: a superseded answer is never
        sent again."""
        folder = self.study_dir(study_uid)
        folder.mkdir(parents=True, exist_ok=True)
        current = {f"{validate_uid(ds.SOPInstanceUID)}.dcm" for ds in datasets}
        for stale in folder.glob("*.dcm"):
            if stale.name not in current:
                stale.unlink()
        write_durably(self._key_path(study_uid), result_key.encode())
        written = 0
        for ds in datasets:
            sop_uid = validate_uid(ds.SOPInstanceUID)
            if nodes and all(self._sent(study_uid, n, sop_uid, result_key) for n in nodes):
                continue
            write_durably(folder / f"{sop_uid}.dcm", encode(ds))
            written += 1
        fsync_dir(self.root)
        return written

    def objects(self, study_uid: str) -> list[Path]:
        folder = self.study_dir(study_uid)
        return sorted(folder.glob("*.dcm")) if folder.is_dir() else []

    def pending(self, study_uid: str, node: Destination) -> list[Path]:
        key = self.result_key(study_uid)
        return [p for p in self.objects(study_uid) if not self._sent(study_uid, node, p.stem, key)]

    def mark_sent(self, study_uid: str, node: Destination, sop_uid: str) -> None:
        marker = self._marker(study_uid, node, sop_uid)
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_durably(marker, self.result_key(study_uid).encode())

    def studies(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def pending_count(self, nodes: list[Destination]) -> int:
        return sum(len(self.pending(uid, n)) for uid in self.studies() for n in nodes)

    def delivered(self, study_uid: str, nodes: list[Destination]) -> bool:
        return all(not self.pending(study_uid, n) for n in nodes)

    def last_modified(self, study_uid: str) -> float:
        folder = self.study_dir(study_uid)
        times = [p.stat().st_mtime for p in folder.rglob("*")] if folder.is_dir() else []
        return max(times, default=0.0)

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)

    def age_s(self, study_uid: str) -> float:
        return time.time() - self.last_modified(study_uid)
