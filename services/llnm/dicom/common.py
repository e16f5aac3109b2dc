"""What every object we write shares: identity of the algorithm, the research-use label, where each
analysed frame sits in its source image, and outlines of masks."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from scipy import ndimage

from llnm import ALGORITHM_NAME, MANUFACTURER, RESEARCH_USE_STATEMENT, __version__
from llnm.dicom import uids
from llnm.dicom.loading import FrameRef
from llnm.quality import only_no_nodule
from llnm.study import FINDING_NO_NODULE, StudyResult, View, ViewResult

#: Series numbers of our outputs (high, so they sort after the acquisition series).
SERIES_NUMBER = {"SEG": 9701, "SR": 9702, "SC": 9703}
SHORT_LABEL = "RESEARCH USE ONLY"


def reportable(result: StudyResult, view_result: ViewResult) -> bool:
    """May this view's masks be shown (SEG segments, SR outline, key image contours and heat map)?

    Only masks that passed the quality gate (llnm.quality): a view used for the result, or, in a good
    thyroid image where simply no nodule was found, its gland. Nothing of a not-assessable study and
    nothing of a declined view: a mask the gate found wrong is never written.
    """
    if not result.assessable:
        return False
    if view_result.used:
        return True
    quality = view_result.quality
    if quality is None:  # no verdict recorded: only the "no nodule found" finding vouches for the gland
        return result.finding == FINDING_NO_NODULE and view_result.nodule_mask is None
    return only_no_nodule([quality])


@dataclass
class AnalysedFrame:
    """One source frame with every view cut from it and their results (usually one view)."""

    ref: FrameRef  # the first view's reference (same instance and frame for all views here)
    views: list[tuple[int, View, ViewResult]]  # (view index in the study, view, its result)

    @property
    def key(self) -> str:
        return frame_key(self.ref)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.ref.header.Rows), int(self.ref.header.Columns))

    def full_mask(self, which: str) -> np.ndarray:
        """Union over this frame's views of the nodule or gland mask, in source frame pixels."""
        out = np.zeros(self.shape, dtype=bool)
        for _, view, result in self.views:
            mask = getattr(result, f"{which}_mask")
            if mask is None or mask.shape != view.image.shape:
                continue
            r0, c0 = view.crop_offset
            h, w = mask.shape
            out[r0:r0 + h, c0:c0 + w] |= mask.astype(bool)
        return out

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """The spacing of the whole frame: that of its views when they all have the same (a relative
        difference up to 1e-6 aside), else None, as for an uncalibrated view. A dual display whose second
        region is uncalibrated or calibrated differently has no one spacing, and the first region's would
        be wrong for the other half (the SEG then states a nominal 1 x 1, llnm.dicom.seg)."""
        first = self.views[0][1].spacing_mm
        for _, view, _ in self.views[1:]:
            other = view.spacing_mm
            if first is None or other is None or not all(
                    math.isclose(a, b, rel_tol=1e-6) for a, b in zip(first, other)):
                return None
        return first


def calibration_state(views: list[View], result: StudyResult) -> bool | None:
    """Is what the report describes calibrated? The index view's state when numbers were measured on it;
    else (no nodule, not assessable) whether every analysed view has a spacing, so a report that measured
    nothing never calls a calibrated view "uncalibrated"; None when no view was analysed at all."""
    if result.assessable and result.index_view is not None:
        return bool(result.calibrated)
    if not views:
        return None
    return all(view.spacing_mm is not None for view in views)


def frame_key(ref: FrameRef) -> str:
    return f"{ref.sop_instance_uid}:{ref.frame_number or 1}"


def analysed_frames(views: list[View], result: StudyResult) -> list[AnalysedFrame]:
    """Every analysed view with its result, grouped by source frame, in view order."""
    frames: dict[str, AnalysedFrame] = {}
    for index, (view, view_result) in enumerate(zip(views, result.views)):
        ref = view.source
        if not isinstance(ref, FrameRef):
            continue
        frames.setdefault(frame_key(ref), AnalysedFrame(ref, [])).views.append((index, view, view_result))
    return list(frames.values())


def algorithm_key(result: StudyResult) -> str:
    """Identity of the algorithm alone: software version and model content hashes, nothing of the
    study or of what the result says. The Device Observer UID (TID 1004) and Tracking UIDs (TID 1410)
    are derived from it, so they stay the same across studies and across re-runs of one study."""
    return uids.versions_key(__version__, result.model_versions)


def versions_key(result: StudyResult) -> str:
    """Software and model versions plus a digest of what the result says: the same inputs give the
    same UIDs, while a changed result (a late report, another age or sex) gets new ones, so a PACS
    that keeps the first copy of a UID never hides the newer result behind the old one."""
    said = json.dumps(_rounded({
        "finding": result.finding, "probability": result.probability, "risk": result.risk_level,
        "contributions": result.contributions, "distance_px": result.capsule_distance_px,
        "length": result.nodule_length_mm, "width": result.nodule_width_mm,
        "warnings": result.warnings,
        # only when declined, so the UIDs of assessable results stay what they were
        **({"not_assessable": result.not_assessable_code} if result.not_assessable_code else {}),
    }), sort_keys=True)
    digest = hashlib.sha256(said.encode()).hexdigest()[:16]
    return algorithm_key(result) + f";result={digest}"


def _rounded(value: object) -> object:
    """Numbers to 4 decimals, so last-bit float differences between backends keep the same UIDs."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    return round(float(value), 4)


def software_versions(result: StudyResult) -> list[str]:
    """SoftwareVersions (LO, <= 64 chars each): ours, then every model hash."""
    values = [f"llnm {__version__}"]
    values += [f"{name} {version}"[:64] for name, version in sorted(result.model_versions.items())]
    return values


def contributing_equipment(result: StudyResult) -> Dataset:
    """ContributingEquipmentSequence item naming this software and its models."""
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = ALGORITHM_NAME
    item.SoftwareVersions = software_versions(result)
    item.ContributionDateTime = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    item.ContributionDescription = f"{ALGORITHM_NAME} analysis. {RESEARCH_USE_STATEMENT}"[:1024]
    item.PurposeOfReferenceCodeSequence = Sequence([dcm_code("109103", "Modifying Equipment")])
    return item


def dcm_code(value: str, meaning: str) -> Dataset:
    """A code sequence item of the DICOM Content Mapping Resource (PS3.16, scheme "DCM")."""
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = meaning
    return code


def add_common(ds: Dataset, result: StudyResult, description: str) -> None:
    """Label, equipment and the study-level attributes highdicom does not copy for us."""
    ds.SeriesDescription = f"{ALGORITHM_NAME} {description} - {SHORT_LABEL}"[:64]
    existing = list(ds.get("ContributingEquipmentSequence", []) or [])
    ds.ContributingEquipmentSequence = Sequence([*existing, contributing_equipment(result)])
    ds.ManufacturerModelName = ALGORITHM_NAME
    ds.SoftwareVersions = software_versions(result)


def laterality(header: Dataset) -> str | None:
    """R or L from the image's (Image)Laterality, else from words in its descriptions; else None."""
    for keyword in ("ImageLaterality", "Laterality", "FrameLaterality"):
        value = str(header.get(keyword, "") or "").strip().upper()
        if value in {"R", "L"}:
            return value
    text = " ".join(str(header.get(k, "") or "") for k in
                    ("SeriesDescription", "ImageComments", "BodyPartExamined")).upper()
    words = set(text.replace("/", " ").replace("_", " ").replace("-", " ").split())
    right = bool(words & {"RIGHT", "RT", "RECHTS", "DROIT", "DERECHO"})
    left = bool(words & {"LEFT", "LT", "LINKS", "GAUCHE", "IZQUIERDO"})
    if right != left:
        return "R" if right else "L"
    return None


def _support(mask: np.ndarray) -> tuple[int, int, np.ndarray | None]:
    """(row, column) of the bounding box of the mask's pixels and the mask cut to it (None if empty):
    labelling and tracing a nodule's box, not the whole view, is what keeps the SR build fast; the
    components, their raster order and hence the outline are the same."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return 0, 0, None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def outline(mask: np.ndarray, max_points: int = 256) -> np.ndarray | None:
    """Closed outline (x, y) of the largest component of `mask`, first point repeated at the end.

    Moore-neighbour tracing of the boundary pixels, thinned to at most `max_points` vertices.
    """
    r0, c0, mask = _support(mask)
    if mask is None:
        return None
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    component = np.pad(labels == (int(np.argmax(sizes)) + 1), 1)
    rows, cols = np.nonzero(component)
    start = (rows[0], cols[0])  # top-most, then left-most pixel: its west neighbour is background
    # clockwise neighbours starting west
    dirs = [(0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1)]
    path = [start]
    current, back = start, 0  # entered from the west
    for _ in range(4 * component.sum() + 8):
        found = False
        for k in range(8):
            d = (back + 1 + k) % 8
            nxt = (current[0] + dirs[d][0], current[1] + dirs[d][1])
            if component[nxt]:
                back = (d + 4) % 8
                current = nxt
                found = True
                break
        if not found or current == start:
            break
        path.append(current)
    pts = np.array(path, dtype=np.float64) - 1.0 + (r0, c0)  # undo the padding and the crop
    if len(pts) > max_points - 1:
        pts = pts[np.linspace(0, len(pts) - 1, max_points - 1).astype(int)]
    if len(pts) < 3:  # a one- or two-pixel blob: its pixels' box, in the same pixel-centre units as a trace
        r0, c0 = pts.min(axis=0) - 0.5
        r1, c1 = pts.max(axis=0) + 0.5
        pts = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=np.float64)
    xy = np.stack([pts[:, 1], pts[:, 0]], axis=1)
    return np.vstack([xy, xy[:1]])
