"""CPDT, the paper's capsule-proximity distance transform, and the minimum capsule distance.

d_i   = distance of nodule pixel i to the capsule (the gland boundary), Euclidean, pixel centre to
        the centre of the nearest pixel outside the gland;
d_max = the largest such distance of any gland pixel (the gland's "central point" C);
x_l(i) = 1 - d_i / d_max for nodule pixels, 0 elsewhere (a grey-level image).

Conventions (the paper leaves them open):
- a nodule pixel outside the gland (extrathyroidal extension, or a segmentation that overshoots the
  capsule) has d_i = 0, so x_l = 1 there and the minimum capsule distance is 0; `extrathyroidal`
  says that this happened;
- a nodule whose edge pixel touches the capsule reads one pixel (centre to centre), e.g. 0.1 mm;
- the image border is not a capsule: a gland cut by the field of view is measured to its visible
  boundary inside the image only (if the gland covers the whole image, the border is used);
- distances in mm use the (row, column) spacing, which may be anisotropic; without calibration the
  distance is reported in pixels only and mm is None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class CapsuleDistance:
    x_l: np.ndarray  # (H, W) float32: 1 - d_i/d_max on nodule pixels, 0 elsewhere
    min_distance_px: float  # min over nodule pixels of d_i, in pixel units
    min_distance_mm: float | None  # the same in mm; None when uncalibrated
    d_max_px: float  # the central point's distance to the capsule
    extrathyroidal: bool  # some nodule pixels lie outside the gland


def _capsule_edt(gland: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """Distance of each gland pixel to the nearest non-gland pixel (0 outside the gland).

    Computed on the gland's bounding box grown by one pixel (inside the image): that ring is
    background wherever it exists, so nothing farther out can be nearer. Much faster on big frames."""
    rows = np.flatnonzero(gland.any(axis=1))
    cols = np.flatnonzero(gland.any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, gland.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, gland.shape[1])
    crop = gland[r0:r1, c0:c1]
    if crop.all():
        inner = ndimage.distance_transform_edt(np.pad(crop, 1, constant_values=False), sampling=sampling)[1:-1, 1:-1]
    else:
        inner = ndimage.distance_transform_edt(crop, sampling=sampling)
    out = np.zeros(gland.shape, dtype=np.float64)
    out[r0:r1, c0:c1] = inner
    return out


def cpdt(gland: np.ndarray, nodule: np.ndarray,
         spacing_mm: tuple[float, float] | None = None) -> CapsuleDistance:
    """The CPDT location map and the minimum nodule-to-capsule distance.

    gland, nodule: (H, W) bool masks on the same grid; both must be non-empty.
    """
    gland = np.asarray(gland, dtype=bool)
    nodule = np.asarray(nodule, dtype=bool)
    if gland.shape != nodule.shape:
        raise ValueError(f"gland {gland.shape} and nodule {nodule.shape} masks differ in shape")
    if not gland.any() or not nodule.any():
        raise ValueError("CPDT needs a non-empty gland mask and a non-empty nodule mask")
    edt_px = _capsule_edt(gland, (1.0, 1.0))
    d_max = float(edt_px.max())
    x_l = np.zeros(gland.shape, dtype=np.float32)
    x_l[nodule] = (1.0 - edt_px[nodule] / d_max).astype(np.float32)
    min_px = float(edt_px[nodule].min())
    min_mm: float | None = None
    if spacing_mm is not None:
        sr, sc = float(spacing_mm[0]), float(spacing_mm[1])
        if sr == sc:
            min_mm = min_px * sr
        else:
            min_mm = float(_capsule_edt(gland, (sr, sc))[nodule].min())
    return CapsuleDistance(
        x_l=x_l,
        min_distance_px=min_px,
        min_distance_mm=min_mm,
        d_max_px=d_max,
        extrathyroidal=bool((nodule & ~gland).any()),
    )
