"""Whole training frames for the nodule detector, composed from real parts.

DDTI gives 300 x 300 crops around one nodule, not whole frames. A composed frame is a TG3K frame
(real thyroid ultrasound with its gland mask) upscaled to a random canvas size, with a DDTI nodule
crop pasted so that the nodule's centre falls on a random gland pixel:
- the nodule's longest side is drawn as 0.5-1.2 x the gland's thickness there (the gland mask's
  bounding-box height), clamped to 10-45 % of the canvas side;
- the crop is resampled through the frame's native resolution (no sharper speckle than the frame);
- the crop is blended with an alpha that is 1 on the nodule and its near rim (the nodule mask dilated
  by 15 % of the nodule size) and falls off smoothly (Gaussian, sigma half that margin) into the frame;
- the crop's brightness is shifted by 70 % of the difference between the frame under the blend region
  and the crop's own rim, so the nodule keeps its contrast to its surroundings but no seam shows.
The label is the pasted nodule mask. numpy, scipy and Pillow only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize to (height, width)."""
    mode = Image.NEAREST if nearest else Image.BILINEAR
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size[::-1], mode)) > 127
    return np.asarray(Image.fromarray(array).resize(size[::-1], mode))


def compose_frame(frame: np.ndarray, gland: np.ndarray, crop: np.ndarray, nodule: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (frame, nodule mask) pair: `crop`'s nodule pasted inside `gland` on `frame` (see module doc)."""
    composed, label, _ = compose_with_gland(frame, gland, crop, nodule, rng)
    return composed, label


def compose_with_gland(frame: np.ndarray, gland: np.ndarray, crop: np.ndarray, nodule: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, nodule mask, gland mask): as compose_frame, plus the gland on the composed canvas with
    the pasted nodule inside it (a nodule that bulges past the gland's edge widens the gland there)."""
    side = int(rng.choice([288, 320, 384, 448]))
    h0, w0 = frame.shape
    scale = side / max(h0, w0)
    shape = (round(h0 * scale), round(w0 * scale))
    canvas = _resize(frame, shape).astype(np.float32)
    gland = _resize(gland, shape)
    rows, cols = np.nonzero(gland)
    if rows.size:
        k = int(rng.integers(rows.size))
        cy, cx = int(rows[k]), int(cols[k])
        thickness = float(np.ptp(rows) + 1)
    else:
        cy, cx = int(shape[0] * rng.uniform(0.3, 0.7)), int(shape[1] * rng.uniform(0.3, 0.7))
        thickness = 0.3 * side
    n_rows, n_cols = np.nonzero(nodule)
    if not n_rows.size:
        raise ValueError("the nodule mask is empty")
    nod_size = float(max(np.ptp(n_rows), np.ptp(n_cols)) + 1)
    target = float(np.clip(thickness * rng.uniform(0.5, 1.2), 0.10 * side, 0.45 * side))
    s = target / nod_size
    ph, pw = max(8, round(crop.shape[0] * s)), max(8, round(crop.shape[1] * s))
    # the crop goes through the frame's own resolution first, so its speckle is no sharper than the frame's
    native = (max(4, round(ph / scale)), max(4, round(pw / scale)))
    patch = _resize(_resize(crop, native), (ph, pw)).astype(np.float32)
    pmask = _resize(nodule, (ph, pw))
    if not pmask.any():
        pmask = _resize(nodule, (ph, pw), nearest=True)
    margin = max(2.0, 0.15 * target)
    grown = ndimage.binary_dilation(pmask, iterations=int(round(margin)))
    alpha = np.maximum(ndimage.gaussian_filter(grown.astype(np.float32), sigma=margin / 2), pmask)
    # where the nodule's centre lands: its mask centroid goes to (cy, cx)
    my, mx = (float(v) for v in ndimage.center_of_mass(pmask))
    top, left = int(round(cy - my)), int(round(cx - mx))
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(shape[0], top + ph), min(shape[1], left + pw)
    if y1 <= y0 or x1 <= x0:
        return canvas.astype(np.uint8), np.zeros(shape, dtype=bool), gland
    sub = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    region = canvas[y0:y1, x0:x1]
    a = alpha[sub]
    rim = grown[sub] & ~pmask[sub]
    own = float(patch[sub][rim].mean()) if rim.any() else float(patch[sub].mean())
    under = float((region * a).sum() / max(a.sum(), 1e-6))
    shifted = patch[sub] + 0.7 * (under - own)
    canvas[y0:y1, x0:x1] = a * shifted + (1 - a) * region
    label = np.zeros(shape, dtype=bool)
    label[y0:y1, x0:x1] = pmask[sub]
    return np.clip(canvas, 0, 255).astype(np.uint8), label, gland | label
