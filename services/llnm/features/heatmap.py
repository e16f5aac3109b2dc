"""Map TMDL's per-token importance (attention rollout over the 3n image tokens) back onto the view.

The tokens of x_l cover the gland box, those of x_t the nodule crop, and each 4 x 4 cell of the
x_m mosaic one boundary patch, so every token lands on the pixels it was computed from.

The map is a sum of boxes of constant value (token cells and boundary patches), smoothed by a
Gaussian of half a texture-token cell (tens of pixels). Filtering the full frame directly with such
a kernel was the slowest step of a study (hundreds of taps per pixel); here the boxes are kept as
row and column indicator matrices R, C with the values in a block matrix D (heat = R D C^T), so the
separable filter only runs down the few indicator columns: filter(heat) = f(R) D f(C)^T. Equal to
scipy's full-frame `gaussian_filter` (mode "reflect") up to float rounding.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.linalg import block_diag

from llnm.features.extract import MOSAIC_GRID, NoduleFeatures


def _cells(start: float, stop: float, g: int, length: int) -> np.ndarray:
    """(length, g) indicator: pixel k (centre k + 0.5) lies in cell j of g equal cells of [start, stop)."""
    centres = np.arange(length) + 0.5
    index = np.floor((centres - start) / max(stop - start, 1e-6) * g).astype(int)
    out = np.zeros((length, g))
    inside = (index >= 0) & (index < g)
    out[np.flatnonzero(inside), index[inside]] = 1.0
    return out


def _span(start: int, stop: int, length: int) -> np.ndarray:
    out = np.zeros(length)
    out[start:stop] = 1.0
    return out


def tokens_to_heatmap(importance: np.ndarray, features: NoduleFeatures, shape: tuple[int, int]) -> np.ndarray:
    """importance: (3n,) in [0, 1] in the order x_l, x_t, x_m -> (H, W) float32 heatmap in [0, 1]."""
    n = importance.shape[0] // 3
    g = int(round(np.sqrt(n)))
    h, w = shape
    rows, cols, blocks = [], [], []
    for grid, (r0, c0, r1, c1) in ((importance[:n], features.location_box),
                                   (importance[n:2 * n], features.texture_box)):
        rows.append(_cells(r0, r1, g, h))
        cols.append(_cells(c0, c1, g, w))
        blocks.append(np.asarray(grid, np.float64).reshape(g, g))
    margin = importance[2 * n:].reshape(g, g)
    cell = max(1, g // MOSAIC_GRID)
    half = features.margin_patch_px / 2
    values = []
    for k, (pr, pc) in enumerate(features.margin_points):
        i, j = divmod(k, MOSAIC_GRID)
        values.append(float(margin[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].mean()))
        rows.append(_span(int(max(0, pr - half)), int(min(h, pr + half + 1)), h)[:, None])
        cols.append(_span(int(max(0, pc - half)), int(min(w, pc + half + 1)), w)[:, None])
    if values:
        blocks.append(np.diag(values))
    cell_px = (features.texture_box[2] - features.texture_box[0]) / max(g, 1)
    sigma = max(1.0, cell_px / 2)
    down = ndimage.gaussian_filter1d(np.hstack(rows), sigma, axis=0, mode="reflect")
    across = ndimage.gaussian_filter1d(np.hstack(cols), sigma, axis=0, mode="reflect")
    heat = ((down @ block_diag(*blocks)) @ across.T).astype(np.float32)
    top = float(heat.max())
    return (heat / top).astype(np.float32) if top > 0 else heat
