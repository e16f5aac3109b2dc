"""The hospital's own cohort, in the layout `llnm train` reads (llnm.model.data, docs/model-card.md).

`export(settings, audit, out)` writes, for every study with a pathology outcome:
- labels.csv `study_uid,llnm,risk_level,p_true,age,sex,report`: llnm from the outcome; risk_level the
  paper's stage from the recorded node count and largest node (`llnm.model.stages.outcome_stage`: 1
  without LLNM or with five or fewer nodes, 2 more than five, 3 any node > 3 cm; a positive without a
  count 2);
  p_true empty (a real label); age, sex and the report text read from the study as the worker reads them.
- views.csv and `images/<uid>/<n>.png`, `masks/<uid>/<n>-gland.png`, `masks/<uid>/<n>-nodule.png`: each
  B-mode view cropped to its ultrasound region as the worker analyses it; masks from the segmentation
  models (the SEG the worker sent), the nodule replaced by the radiologist's corrected outline where one
  was given for that frame. A view without both masks is left out, a study without such a view too (both
  counted in the returned report).

The study's DICOM instances come from the spool or, once retention removed them, from
`<data_dir>/cohort-sources/<uid>/`, where `keep_sources` puts a copy as soon as a radiologist or a
pathologist answers (feedback or outcome): the cohort outlives `LLNM_RETENTION_HOURS`.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.model.stages import outcome_stage
from llnm.observability.logs import get_logger
from llnm.storage.names import validate_uid
from llnm.storage.spool import Spool

log = get_logger(__name__)

LABEL_COLUMNS = ["study_uid", "llnm", "risk_level", "p_true", "age", "sex", "report"]
VIEW_COLUMNS = ["study_uid", "sop_instance_uid", "image", "gland_mask", "nodule_mask", "spacing_row_mm",
                "spacing_col_mm", "region_x0", "region_y0", "region_x1", "region_y1"]

#: (backend, image) -> (nodule detection with .mask, or None; gland mask or None): llnm.pipeline's
Segmenter = Callable[[Any, np.ndarray], tuple[Any, "np.ndarray | None"]]


def sources_dir(settings: Settings, study_uid: str) -> Path:
    return settings.data_dir / "cohort-sources" / validate_uid(study_uid)


def keep_sources(settings: Settings, study_uid: str) -> int:
    """Keep (hard link, else copy) the study's spooled instances beyond retention; returns how many."""
    spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
    root = spool.study_dir(study_uid)
    kept = 0
    for path in spool.instances(study_uid):
        target = sources_dir(settings, study_uid) / path.relative_to(root)
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        kept += 1
    return kept


def study_files(settings: Settings, study_uid: str) -> list[Path]:
    spool = Spool(settings.spool_dir, settings.min_free_disk_mb, settings.duplicate_policy)
    paths = spool.instances(study_uid)
    if paths:
        return paths
    folder = sources_dir(settings, study_uid)
    return sorted(folder.glob("*/*.dcm")) if folder.is_dir() else []


def outline_mask(points: list[list[float]], shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """A polygon of (row, column) points in the source frame, rasterised on the crop's grid."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (shape[1], shape[0]), 0)
    xy = [(float(c) - offset[1], float(r) - offset[0]) for r, c in points]
    if len(xy) >= 3:
        ImageDraw.Draw(image).polygon(xy, fill=255)
    return np.asarray(image) > 127


def _corrections(audit: AuditTrail, study_uid: str) -> dict[tuple[str, int], list[list[float]]]:
    """The latest corrected outline per (SOP Instance UID, frame number)."""
    out: dict[tuple[str, int], list[list[float]]] = {}
    for item in audit.feedback(study_uid):
        o = item.get("outline")
        if isinstance(o, dict) and o.get("points") and o.get("sop_instance_uid"):
            out[(str(o["sop_instance_uid"]), int(o.get("frame") or 1))] = o["points"]
    return out


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def export(settings: Settings, audit: AuditTrail, out: Path, backend: Any = None,
           segmenter: Segmenter | None = None) -> dict[str, Any]:
    """Write the cohort into `out`; returns counts and the studies left out with why (UIDs only)."""
    from llnm.dicom.loading import FrameRef, group_by_study, load_study

    if segmenter is None:
        from llnm.pipeline import default_segmenter

        segmenter = default_segmenter
    if backend is None:
        from llnm.inference.backend import create_backend

        backend = create_backend(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for row in audit.outcomes():
        uid = row["study_uid"]
        paths = study_files(settings, uid)
        if not paths:
            skipped[uid] = "no DICOM instances left (spool removed before any feedback)"
            continue
        groups, _ = group_by_study(paths)
        if uid not in groups:
            skipped[uid] = "no readable instance of this study"
            continue
        study = load_study(groups[uid], report_dir=settings.report_dir or None)
        corrections = _corrections(audit, uid)
        written = 0
        for number, view in enumerate(study.views, start=1):
            detection, gland = segmenter(backend, view.image)
            nodule = None if detection is None else np.asarray(detection.mask, dtype=bool)
            ref = view.source if isinstance(view.source, FrameRef) else None
            key = (ref.sop_instance_uid, int(ref.frame_number or 1)) if ref else None
            if key in corrections:
                nodule = outline_mask(corrections[key], view.image.shape, view.crop_offset)
            if nodule is None or gland is None or not nodule.any() or not np.asarray(gland).any():
                continue
            image_rel = f"images/{uid}/{number}.png"
            gland_rel, nodule_rel = f"masks/{uid}/{number}-gland.png", f"masks/{uid}/{number}-nodule.png"
            _png(out / image_rel, np.asarray(view.image, dtype=np.uint8))
            _png(out / gland_rel, np.where(np.asarray(gland, dtype=bool), 255, 0).astype(np.uint8))
            _png(out / nodule_rel, np.where(nodule, 255, 0).astype(np.uint8))
            r0, c0 = view.crop_offset
            h, w = view.image.shape[:2]
            spacing = view.spacing_mm
            views.append({"study_uid": uid, "sop_instance_uid": ref.sop_instance_uid if ref else "",
                          "image": image_rel, "gland_mask": gland_rel, "nodule_mask": nodule_rel,
                          "spacing_row_mm": f"{spacing[0]:.6g}" if spacing else "",
                          "spacing_col_mm": f"{spacing[1]:.6g}" if spacing else "",
                          "region_x0": c0, "region_y0": r0, "region_x1": c0 + w, "region_y1": r0 + h})
            written += 1
        if not written:
            skipped[uid] = "no view with both a gland and a nodule mask"
            continue
        labels.append({"study_uid": uid, "llnm": int(row["llnm"]),
                       "risk_level": outcome_stage(bool(row["llnm"]), row["metastatic_nodes"],
                                                   row["largest_node_mm"]), "p_true": "",
                       "age": "" if study.age_years is None else f"{study.age_years:g}",
                       "sex": study.sex or "", "report": study.report_text or ""})
    for name, columns, rows in (("labels.csv", LABEL_COLUMNS, labels), ("views.csv", VIEW_COLUMNS, views)):
        with (out / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    positives = sum(1 for r in labels if r["llnm"])
    log.info("cohort exported", studies=len(labels), views=len(views), positives=positives, skipped=len(skipped))
    return {"studies": len(labels), "views": len(views), "positives": positives, "skipped": skipped}
