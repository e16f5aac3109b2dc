"""Map TMDL's per-token importance (attention rollout over the 3n image tokens) back onto the view.

The tokens of x_l cover the gland box, those of x_t the nodule crop, and each 4 x 4 cell of the
x_m mosaic one boundary patch, so every token lands on the pixels it was computed from.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from llnm.features.extract import MOSAIC_GRID, NoduleFeatures


def _splat_grid(heat: np.ndarray, grid: np.ndarray, box: tuple[float, float, float, float]) -> None:
    r0, c0, r1, c1 = box
    g = grid.shape[0]
    h, w = heat.shape
    rows = np.arange(h) + 0.5
    cols = np.arange(w) + 0.5
    gi = np.floor((rows - r0) / max(r1 - r0, 1e-6) * g).astype(int)
    gj = np.floor((cols - c0) / max(c1 - c0, 1e-6) * g).astype(int)
    ri, ci = np.flatnonzero((gi >= 0) & (gi < g)), np.flatnonzero((gj >= 0) & (gj < g))
    if len(ri) and len(ci):
        heat[np.ix_(ri, ci)] += grid[np.ix_(gi[ri], gj[ci])]


def smooth_support(heat: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """`ndimage.gaussian_filter(heat, sigma)` computed only over the bounding box of the non-zero
    pixels padded by the kernel radius: the splatted heat covers the gland and nodule boxes, a small
    part of the frame, and the full-frame filter was the slowest step of a study.

    Equal to the full-frame filter: outside the padded box the kernel reaches no non-zero pixel (zero
    there too); inside, the padding is zero wherever the box edge lies inside the frame, so the
    filter's reflection at the box edge reflects zeros exactly as the frame would hold them, and
    where the box is clipped at the frame edge both reflect at the same edge.
    """
    rows = np.flatnonzero(heat.any(axis=1))
    if not len(rows):
        return heat.copy()
    cols = np.flatnonzero(heat.any(axis=0))
    radius = int(truncate * float(sigma) + 0.5) + 1
    r0, r1 = max(0, rows[0] - radius), min(heat.shape[0], rows[-1] + 1 + radius)
    c0, c1 = max(0, cols[0] - radius), min(heat.shape[1], cols[-1] + 1 + radius)
    out = np.zeros_like(heat)
    out[r0:r1, c0:c1] = ndimage.gaussian_filter(heat[r0:r1, c0:c1], sigma=sigma, truncate=truncate)
    return out


def tokens_to_heatmap(importance: np.ndarray, features: NoduleFeatures, shape: tuple[int, int]) -> np.ndarray:
    """importance: (3n,) in [0, 1] in the order x_l, x_t, x_m -> (H, W) float32 heatmap in [0, 1]."""
    n = importance.shape[0] // 3
    g = int(round(np.sqrt(n)))
    heat = np.zeros(shape, dtype=np.float32)
    _splat_grid(heat, importance[:n].reshape(g, g), features.location_box)
    _splat_grid(heat, importance[n:2 * n].reshape(g, g), features.texture_box)
    margin = importance[2 * n:].reshape(g, g)
    cell = max(1, g // MOSAIC_GRID)
    half = features.margin_patch_px / 2
    for k, (pr, pc) in enumerate(features.margin_points):
        i, j = divmod(k, MOSAIC_GRID)
        value = float(margin[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].mean())
        r0, r1 = int(max(0, pr - half)), int(min(shape[0], pr + half + 1))
        c0, c1 = int(max(0, pc - half)), int(min(shape[1], pc + half + 1))
        heat[r0:r1, c0:c1] += value
    cell_px = (features.texture_box[2] - features.texture_box[0]) / max(g, 1)
    heat = smooth_support(heat, sigma=max(1.0, cell_px / 2))
    top = float(heat.max())
    return (heat / top).astype(np.float32) if top > 0 else heat
