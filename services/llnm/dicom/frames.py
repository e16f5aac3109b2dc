"""Which frames to analyse: B-mode greyscale only, and one representative frame per cine loop.

A frame is B-mode when its tissue crop is grey. Colour flow, power Doppler and elastography all paint
colour over the tissue; vendors do not flag that reliably (UltrasoundColorDataPresent is set on plain
grey OB images, and is absent on power Doppler ones), so the pixels decide: a crop with more than
COLOUR_FRACTION of clearly coloured pixels is not B-mode (a whole frame without a tissue region is
judged on its central part, away from the vendor's coloured chrome). A Doppler region (RegionDataType 2-7) in
SequenceOfUltrasoundRegions also rules the instance out.

In a B-mode crop, the few coloured pixels there are drawn over the tissue: calipers, their dotted
lines and labels in a vendor's colour. `overlay_mask` finds them (with the one-pixel fringe JPEG leaves
around them) so that the view's grey image is filled in there from the tissue around them
(llnm.segmentation.marks.fill) instead of carrying a green or yellow cross at some grey level.

Cine loops (multi-frame US): every frame is one acquisition of the same view, so one frame stands for
the loop. We score up to MAX_SCORED_FRAMES evenly spaced frames by mean gradient magnitude of the grey
crop (a sharp, well-contrasted frame, not a blurred one mid-sweep) and keep the best; equal scores keep
the frame nearest the middle of the loop. The choice is deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: A pixel is "coloured" when its RGB channels spread by more than this (grey tissue: near 0, JPEG
#: chroma noise on grey stays below ~12).
CHROMA_THRESHOLD = 40
#: More coloured pixels than this share of the crop: colour/power Doppler or elastography.
COLOUR_FRACTION = 0.02
MAX_SCORED_FRAMES = 32


def colour_fraction(rgb_crop: np.ndarray) -> float:
    if rgb_crop.size == 0:
        return 0.0
    rgb = rgb_crop.astype(np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return float((spread > CHROMA_THRESHOLD).mean())


def overlay_mask(rgb_crop: np.ndarray) -> np.ndarray:
    """(H, W) bool: the coloured pixels of a B-mode crop and their one-pixel fringe."""
    rgb = np.asarray(rgb_crop).astype(np.int16)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > CHROMA_THRESHOLD
    if not coloured.any():
        return coloured
    return ndimage.binary_dilation(coloured, np.ones((3, 3), dtype=bool))


def is_bmode(rgb_crop: np.ndarray, whole_frame: bool = False) -> bool:
    """Grey enough to be B-mode. Without a tissue region the crop is the whole frame, whose vendor
    chrome (coloured title bars, colour scales) is not tissue: judge its central 60 % only."""
    if whole_frame:
        h, w = rgb_crop.shape[:2]
        rgb_crop = rgb_crop[int(h * 0.2):int(h * 0.8), int(w * 0.2):int(w * 0.8)]
    return colour_fraction(rgb_crop) <= COLOUR_FRACTION


def sharpness(grey: np.ndarray) -> float:
    """Mean gradient magnitude: higher for a crisp, contrasted frame."""
    g = grey.astype(np.float32)
    if g.shape[0] < 2 or g.shape[1] < 2:
        return 0.0
    gy = np.abs(np.diff(g, axis=0)).mean()
    gx = np.abs(np.diff(g, axis=1)).mean()
    return float(gx + gy)


def candidate_frame_indices(n_frames: int) -> list[int]:
    """Frames to score in a cine of n_frames (0-based), evenly spaced, at most MAX_SCORED_FRAMES."""
    if n_frames <= MAX_SCORED_FRAMES:
        return list(range(n_frames))
    return sorted({int(round(i)) for i in np.linspace(0, n_frames - 1, MAX_SCORED_FRAMES)})


def pick_representative(scores: dict[int, float], n_frames: int) -> int | None:
    """The best-scoring frame; ties go to the frame nearest the middle, then the earlier one."""
    if not scores:
        return None
    middle = (n_frames - 1) / 2.0
    return min(scores, key=lambda i: (-round(scores[i], 6), abs(i - middle), i))
