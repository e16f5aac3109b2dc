"""A radiologist's corrected nodule outline sent back from a viewer as DICOM, turned into the console's
outline: {"sop_instance_uid", "frame", "points": [[row, column], ...]} in the source frame's pixels.

- SEG (PS3.3 A.51): the first segment's first frame that holds pixels; its source frame from the frame's
  DerivationImageSequence > SourceImageSequence (PS3.3 C.7.6.16.2.6), else the SEG's
  ReferencedSeriesSequence when it names one instance; the outline is the mask's boundary, ordered by
  angle around its centre (a nodule outline is close to star-shaped; holes are ignored).
- SR (TID 1500 and any SR): the first SCOORD content item (PS3.3 C.18.6) of GraphicType POLYLINE or
  POLYGON; GraphicData are (column, row) pairs, 1-based sub-pixel (PS3.3 C.18.6.1.2); its image from the
  child IMAGE item's ReferencedSOPSequence.
The object must belong to the study it is posted for. Nothing of its header is logged or stored besides
the referenced UIDs and the points. An SR outline with a point that is not a finite pixel position within
any frame (`plausible_points`) is skipped with a warning, as stored it would break the study's page.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from llnm.observability.logs import get_logger

log = get_logger(__name__)

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_POINTS = 720
#: the range of a plausible outline point's row and column: a frame has at most 65535 rows and columns
#: (US), and -1 leaves room for a vertex on the frame's top or left edge (an SR's 0.0 is -1 here)
MIN_COORD, MAX_COORD = -1.0, 65535.0


class CorrectionError(ValueError):
    """Why an uploaded object gives no outline (a fixed text: no header value in it)."""


def outline_from_dicom(data: bytes, study_uid: str) -> tuple[dict[str, Any], str]:
    """(outline, "seg" or "sr") from a DICOM Part 10 file's bytes."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError):
        raise CorrectionError("not a DICOM file") from None
    if str(ds.get("StudyInstanceUID", "")) != study_uid:
        raise CorrectionError("the object belongs to another study")
    if str(ds.get("SOPClassUID", "")) == SEG_CLASS:
        return _from_seg(ds), "seg"
    if str(ds.get("Modality", "")) == "SR":
        return _from_sr(ds), "sr"
    raise CorrectionError("expected a DICOM SEG or SR")


def plausible_points(points: list[list[float]]) -> bool:
    """Every [row, column] is a finite number within MIN_COORD..MAX_COORD (NaN or Infinity stored in an
    outline would make the study's JSON unwritable)."""
    return all(math.isfinite(v) and MIN_COORD <= v <= MAX_COORD for point in points for v in point)


def mask_outline(mask: np.ndarray) -> list[list[float]]:
    """Boundary pixels of a mask as (row, column), ordered by angle around the centre, at most MAX_POINTS."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask)
    rows, cols = np.nonzero(edge)
    if len(rows) < 3:
        raise CorrectionError("the outline has fewer than 3 points")
    cr, cc = rows.mean(), cols.mean()
    order = np.argsort(np.arctan2(rows - cr, cols - cc))
    step = max(1, len(order) // MAX_POINTS)
    return [[float(rows[i]), float(cols[i])] for i in order[::step]]


def _from_seg(ds: Dataset) -> dict[str, Any]:
    frames = np.asarray(ds.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    for index, frame in enumerate(frames):
        if not frame.any():
            continue
        ref = _seg_source(ds, per_frame[index] if index < len(per_frame) else None)
        return {**ref, "points": mask_outline(frame > 0)}
    raise CorrectionError("the SEG has no segmented pixel")


def _seg_source(ds: Dataset, group: Dataset | None) -> dict[str, Any]:
    for derivation in (group.get("DerivationImageSequence") or []) if group is not None else []:
        for source in derivation.get("SourceImageSequence") or []:
            return {"sop_instance_uid": str(source.ReferencedSOPInstanceUID),
                    "frame": int(source.get("ReferencedFrameNumber") or 1)}
    instances = [i for s in ds.get("ReferencedSeriesSequence") or [] for i in s.get("ReferencedInstanceSequence") or []]
    if len(instances) == 1:
        return {"sop_instance_uid": str(instances[0].ReferencedSOPInstanceUID), "frame": 1}
    raise CorrectionError("the SEG does not say which image it outlines")


def _walk(items: Any) -> Any:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _from_sr(ds: Dataset) -> dict[str, Any]:
    for item in _walk(ds.get("ContentSequence")):
        if item.get("ValueType") != "SCOORD" or item.get("GraphicType") not in ("POLYLINE", "POLYGON"):
            continue
        data = [float(v) for v in item.GraphicData]
        points = [[data[i + 1] - 1.0, data[i] - 1.0] for i in range(0, len(data) - 1, 2)]
        if not plausible_points(points):
            log.warning("SR outline skipped: a point is not finite or outside any frame", reason="GraphicData")
            continue
        for child in item.get("ContentSequence") or []:
            for ref in child.get("ReferencedSOPSequence") or []:
                frames = ref.get("ReferencedFrameNumber")
                frame = int(frames[0] if isinstance(frames, (list, pydicom.multival.MultiValue)) else frames or 1)
                if len(points) < 3:
                    raise CorrectionError("the outline has fewer than 3 points")
                return {"sop_instance_uid": str(ref.ReferencedSOPInstanceUID), "frame": frame,
                        "points": points[:MAX_POINTS * 4]}
    raise CorrectionError("the SR has no polyline outline on an image")
