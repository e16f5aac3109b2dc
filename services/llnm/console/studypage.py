"""What one study's page shows, gathered from the audit database and the files the worker keeps.

The result numbers, warnings and model versions come from the summary the worker kept in the audit
database (the values the SR carries); the key images (Secondary Capture, heat map and outlines burned in)
from the results folder or the outbox; what each destination answered from the trail's "sent" and
"send failed" events. Patient name, ID and birth date are read from a spooled instance's header only for
a role allowed to see them (never stored, logged or put in a URL).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.storage.outbox import Outbox
from llnm.storage.spool import Spool

SC_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.7",)


def key_image_files(settings: Settings, study_uid: str, summary: dict[str, Any] | None) -> list[Path]:
    """The study's key image files still on disk (results folder first, then the outbox)."""
    names = [o["file"] for o in (summary or {}).get("objects", []) if o.get("type") == "SC"]
    folders = [settings.results_path / study_uid, Outbox(settings.outbox_dir).study_dir(study_uid)]
    out = []
    for name in names:
        if "/" in name or "\\" in name or name.startswith("."):
            continue
        for folder in folders:
            if (folder / name).is_file():
                out.append(folder / name)
                break
    return out


def render_png(path: Path, max_side: int = 1024) -> bytes:
    """A key image as PNG (first frame, RGB or greyscale, shrunk to max_side)."""
    import numpy as np
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if getattr(ds, "NumberOfFrames", 1) and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(arr)
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def patient_identity(settings: Settings, study_uid: str) -> dict[str, str] | None:
    """Name, ID and birth date from the first spooled instance (for PHI roles only); None when gone."""
    import pydicom

    spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
    for path in spool.instances(study_uid)[:1]:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["PatientName", "PatientID", "PatientBirthDate"])
        return {"name": str(ds.get("PatientName", "") or ""), "id": str(ds.get("PatientID", "") or ""),
                "birth_date": str(ds.get("PatientBirthDate", "") or "")}
    return None


def destination_answers(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per destination: the last answer (stored or failed, with the reason), when, and how many objects."""
    last: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["event"] in ("sent", "send failed") and e.get("destination"):
            last[e["destination"]] = {"destination": e["destination"], "ts": e["ts"],
                                      "answer": "stored" if e["event"] == "sent" else "failed",
                                      "objects": e.get("objects"), "reason": e.get("reason")}
    return list(last.values())


def study_view(audit: AuditTrail, study_uid: str) -> dict[str, Any] | None:
    """Everything on the page except what needs a role check (identity, key image pixels)."""
    row = audit.study(study_uid)
    if row is None:
        return None
    events = audit.events(study_uid)
    kept = audit.result(study_uid)
    summary = kept["summary"] if kept else None
    return {
        "study": row,
        "events": events,
        "summary": summary,
        "scanner_model": kept["scanner_model"] if kept else None,
        "models": ((summary or {}).get("algorithm") or {}).get("models", {}),
        "destinations": destination_answers(events),
        "feedback": audit.feedback(study_uid),
        "outcome": audit.outcome(study_uid),
    }
