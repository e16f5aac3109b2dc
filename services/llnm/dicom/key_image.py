"""Secondary Capture key image: the analysed frame with the result burned in, for PACS viewers that
show neither SR nor SEG.

The whole source frame as acquired (so the reader recognises it), with, inside each analysed tissue
region, the attention heatmap blended in, the gland outline (cyan) and the nodule outline (yellow);
below the frame a banner with the probability, the risk level, the capsule distance and
"RESEARCH USE ONLY". The banner is added below, never over the image. BurnedInAnnotation is copied
from the source (the frame keeps whatever the scanner burned in) and defaults to YES.

Only masks that passed the quality gate are drawn (`llnm.dicom.common.reportable`): a not-assessable
study's key image is the frame as acquired with "not assessable: <reason>" below it and no outline,
heat map or number; a view the gate declined in an assessable study gets no outline and a banner line
saying why it was not used.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from llnm import ALGORITHM_NAME, MANUFACTURER
from llnm.dicom import codes
from llnm.dicom.common import (
    SERIES_NUMBER,
    SHORT_LABEL,
    AnalysedFrame,
    add_common,
    laterality,
    reportable,
    versions_key,
)
from llnm.dicom.uids import output_instance_uid, output_series_uid
from llnm.quality import view_declined
from llnm.study import StudyResult

NODULE_RGB = (255, 220, 0)
GLAND_RGB = (0, 220, 255)
HEATMAP_ALPHA = 0.4


def _heat_colour(h: np.ndarray) -> np.ndarray:
    """A small 'hot' colour map: black-red-yellow-white for 0..1."""
    h = np.clip(h, 0.0, 1.0)[..., None]
    r = np.clip(3 * h, 0, 1)
    g = np.clip(3 * h - 1, 0, 1)
    b = np.clip(3 * h - 2, 0, 1)
    return np.concatenate([r, g, b], axis=-1) * 255.0


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask's pixels within `width` of its border. Eroded only over the mask's bounding box plus
    one background pixel each side (the same erosion as over the whole view, where the rest is 0)."""
    mask = mask.astype(bool)
    edge = np.zeros_like(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return edge
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(0, rows[0] - 1), min(mask.shape[0], rows[-1] + 2)
    c0, c1 = max(0, cols[0] - 1), min(mask.shape[1], cols[-1] + 2)
    box = mask[r0:r1, c0:c1]
    edge[r0:r1, c0:c1] = box & ~ndimage.binary_erosion(box, iterations=width, border_value=0)
    return edge


def _blend_heat(part: np.ndarray, heat: np.ndarray) -> None:
    """Blend the heat map into `part` in place, only where it is non-zero: elsewhere the weight is 0
    and the pixels stay as they are (the heat map is zero outside the smoothed token boxes)."""
    rows = np.flatnonzero(heat.any(axis=1))
    if not len(rows):
        return
    cols = np.flatnonzero(heat.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    h = heat[window]
    weight = HEATMAP_ALPHA * np.clip(h, 0, 1)[..., None]
    part[window] = part[window] * (1 - weight) + _heat_colour(h) * weight


def render(frame: AnalysedFrame, result: StudyResult) -> np.ndarray:
    """(H + banner, W, 3) uint8 RGB."""
    image = frame.ref.frame_rgb.astype(np.float32)  # astype copies: the source frame stays as read
    line = max(1, min(image.shape[:2]) // 200)
    for _, view, view_result in frame.views:
        r0, c0 = view.crop_offset
        h, w = view.image.shape
        part = image[r0:r0 + h, c0:c0 + w]
        if not reportable(result, view_result):
            continue  # a mask or heat map built on a declined segmentation is never drawn
        if view_result.heatmap is not None and view_result.heatmap.shape == (h, w):
            _blend_heat(part, view_result.heatmap)
        for mask, colour in ((view_result.gland_mask, GLAND_RGB), (view_result.nodule_mask, NODULE_RGB)):
            if mask is not None and mask.shape == (h, w) and mask.any():
                part[_edge(mask, line)] = colour
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, _banner(rgb.shape[1], result, frame)], axis=0)


def banner_lines(result: StudyResult, frame: AnalysedFrame | None = None) -> list[str]:
    if not result.assessable:  # the reason, and no number at all
        return [f"{ALGORITHM_NAME}: {result.finding}", f"{SHORT_LABEL}, NOT FOR DIAGNOSIS"]
    declines = []
    for index, _, view_result in (frame.views if frame is not None else []):
        reason = view_declined(view_result)
        if reason is not None:
            declines.append(f"view {index + 1} not used: {reason.text}")
    if result.probability is None:
        first = f"{ALGORITHM_NAME}: {result.finding}"
    else:
        risk = codes.RISK_NAMES.get(result.risk_level or 0, "unknown").upper()
        first = f"{ALGORITHM_NAME}: P(LLNM) = {100 * result.probability:.0f}%  risk {risk}"
    if result.calibrated and result.capsule_distance_mm is not None:
        second = f"capsule distance {result.capsule_distance_mm:.1f} mm"
    elif result.capsule_distance_px is not None:
        second = f"capsule distance {result.capsule_distance_px:.0f} px (uncalibrated)"
    else:
        second = "uncalibrated" if not result.calibrated else ""
    return [first, second, *declines, f"{SHORT_LABEL}, NOT FOR DIAGNOSIS"]


def _banner(width: int, result: StudyResult, frame: AnalysedFrame | None = None) -> np.ndarray:
    size = max(10, min(28, width // 36))
    font = ImageFont.load_default(size=size)
    lines = [t for t in banner_lines(result, frame) if t]
    height = (size + 4) * len(lines) + 8
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        colour = (255, 80, 80) if text.startswith(SHORT_LABEL) else (255, 255, 255)
        draw.text((6, 4 + i * (size + 4)), text, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def build_key_image(frame: AnalysedFrame, result: StudyResult, study_uid: str, number: int) -> hd.sc.SCImage:
    pixels = render(frame, result)
    versions = versions_key(result)
    header = frame.ref.header
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=output_series_uid("SC", study_uid, versions),
        series_number=SERIES_NUMBER["SC"],
        sop_instance_uid=output_instance_uid("SC", study_uid, [frame.key], versions),
        instance_number=number,
        manufacturer=MANUFACTURER,
        patient_orientation=("A", "F"),  # highdicom insists; replaced by "unknown" (empty) below
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.PatientOrientation = ""
    side = laterality(header)
    sc.Laterality = side or ""  # Type 2C: the thyroid is paired, so state the lobe or leave it empty
    sc.Modality = "US"
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = str(header.get("BurnedInAnnotation", "") or "YES")
    if result.assessable:
        sc.ImageComments = (f"{ALGORITHM_NAME} key image: nodule (yellow), gland (cyan), attention heatmap. "
                            "Research use only, not for diagnosis.")
    else:
        sc.ImageComments = (f"{ALGORITHM_NAME} key image: {result.finding}; no outline, heat map or "
                            "measurement. Research use only, not for diagnosis.")[:10240]
    add_common(sc, result, "Key image")
    return sc
