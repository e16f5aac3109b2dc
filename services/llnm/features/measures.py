"""What a reader can measure on one view, as numbers: the targets of TMDL's auxiliary training loss.

The paper trains TMDL on the LLNM label alone. On a few hundred studies its image stream then learns
little of what the pixels show (issue 15: the image groups alone rank below a logistic regression on
the mask geometry). `llnm train --aux-measures W` adds a second loss that asks the image stream to
predict these numbers, measured on the full-resolution view with the same masks it was given; they are
never inputs, so the exported model and the runtime do not change.

Geometry: capsule distance, length and width (mm when calibrated, else pixels), the vertical third,
the aspect ratio, the echogenicity contrast (x_e). Pixels: internal heterogeneity (the spread of the
nodule's grey once speckle is smoothed away), the share of bright punctate foci, and the outline's
irregularity (perimeter against the circle of the same area).

Pure numpy/scipy: arrays in, a float vector out.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from llnm.features.extract import NoduleFeatures

#: the measurements, in the order of `view_measures`' vector
MEASURES = ("capsule", "length", "width", "upper", "middle", "aspect", "echo", "heterogeneity", "foci",
            "irregularity")
#: grey levels (0-255) a focus must stand above the tissue around it (FOCUS_BACKGROUND_MM)
FOCUS_CONTRAST = 45.0
#: a punctate focus is a point: its grey is compared with the tissue within this Gaussian sigma (mm;
#: pixels when uncalibrated: FOCUS_BACKGROUND_PX), so a coarse bright texture is not counted as foci
FOCUS_BACKGROUND_MM = 0.5
FOCUS_BACKGROUND_PX = 5.0
#: the point itself, lightly smoothed (mm; pixels when uncalibrated: 1 px)
FOCUS_POINT_MM = 0.08
#: smoothing (mm, Gaussian sigma; pixels when uncalibrated: SPECKLE_SIGMA_PX) that removes speckle
#: before the heterogeneity is read
SPECKLE_SIGMA_MM = 0.6
SPECKLE_SIGMA_PX = 6.0


def _mm_or_px(mm: float | None, px: float) -> float:
    return float(mm) if mm is not None else float(px)


def perimeter_px(mask: np.ndarray) -> float:
    """Boundary pixels of a mask (4-connected erosion), a perimeter estimate in pixels."""
    return float((mask & ~ndimage.binary_erosion(mask)).sum())


def view_measures(image: np.ndarray, nodule: np.ndarray, features: NoduleFeatures,
                  spacing_mm: tuple[float, float] | None) -> np.ndarray:
    """(len(MEASURES),) float32 of one view: `image` (H, W) uint8, `nodule` (H, W) bool (the mask the
    features were computed with), `features` from `llnm.features.extract_features`, `spacing_mm`
    (row, col) or None. Heterogeneity is the interquartile range of the smoothed grey inside the
    nodule: robust to a few foci or a cyst, where a standard deviation follows them."""
    area = float(nodule.sum())
    inner = ndimage.binary_erosion(nodule, iterations=2)
    if inner.sum() < 16:
        inner = nodule
    grey = image.astype(np.float32)
    points = np.argwhere(nodule)
    (r0, c0), (r1, c1) = points.min(axis=0), points.max(axis=0) + 1
    sigma = (SPECKLE_SIGMA_PX, SPECKLE_SIGMA_PX) if spacing_mm is None else (
        SPECKLE_SIGMA_MM / float(spacing_mm[0]), SPECKLE_SIGMA_MM / float(spacing_mm[1]))
    pad = int(3 * max(sigma)) + 1
    window = (slice(max(r0 - pad, 0), r1 + pad), slice(max(c0 - pad, 0), c1 + pad))
    smooth = ndimage.gaussian_filter(grey[window], sigma)[inner[window]]
    q25, q75 = np.percentile(smooth, [25, 75])
    heterogeneity = float(q75 - q25) / 255.0
    point, background = ((1.0, 1.0), (FOCUS_BACKGROUND_PX,) * 2) if spacing_mm is None else (
        tuple(FOCUS_POINT_MM / float(s) for s in spacing_mm), tuple(FOCUS_BACKGROUND_MM / float(s) for s in spacing_mm))
    patch = grey[window]
    contrast = ndimage.gaussian_filter(patch, point) - ndimage.gaussian_filter(patch, background)
    foci = float((contrast[inner[window]] > FOCUS_CONTRAST).mean())
    circle = 2.0 * math.sqrt(math.pi * max(area, 1.0))
    vertical = features.location.get("vertical")
    return np.array([
        math.log1p(max(_mm_or_px(features.capsule_distance_mm, features.capsule_distance_px), 0.0)),
        math.log(max(_mm_or_px(features.length_mm, features.length_px), 0.1)),
        math.log(max(_mm_or_px(features.width_mm, features.width_px), 0.1)),
        float(vertical == "upper"),
        float(vertical == "middle"),
        math.log(max(features.aspect_ratio, 1e-3)),
        features.echogenicity,
        heterogeneity,
        math.log1p(100.0 * foci),
        math.log(max(perimeter_px(nodule), 1.0) / circle),
    ], dtype=np.float32)
