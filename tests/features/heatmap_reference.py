"""The heat map as the product computed it before the low-rank form (llnm.features.heatmap): splat every
token box onto the frame, then filter the whole frame. The oracle of the heat-map tests and the baseline
of the heat-map stage in bench/pipeline_stages.py."""

from __future__ import annotations

import numpy as np


def full_frame_heatmap(importance, features, shape):
    """The heat map as computed before the low-rank form: splat every box, filter the whole frame."""
    from scipy import ndimage

    from llnm.features.extract import MOSAIC_GRID

    def splat(heat, grid, box):
        r0, c0, r1, c1 = box
        g = grid.shape[0]
        rows, cols = np.arange(heat.shape[0]) + 0.5, np.arange(heat.shape[1]) + 0.5
        gi = np.floor((rows - r0) / max(r1 - r0, 1e-6) * g).astype(int)
        gj = np.floor((cols - c0) / max(c1 - c0, 1e-6) * g).astype(int)
        ri, ci = np.flatnonzero((gi >= 0) & (gi < g)), np.flatnonzero((gj >= 0) & (gj < g))
        if len(ri) and len(ci):
            heat[np.ix_(ri, ci)] += grid[np.ix_(gi[ri], gj[ci])]

    n = importance.shape[0] // 3
    g = int(round(np.sqrt(n)))
    heat = np.zeros(shape, dtype=np.float32)
    splat(heat, importance[:n].reshape(g, g), features.location_box)
    splat(heat, importance[n:2 * n].reshape(g, g), features.texture_box)
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
    heat = ndimage.gaussian_filter(heat, sigma=max(1.0, cell_px / 2))
    top = float(heat.max())
    return (heat / top).astype(np.float32) if top > 0 else heat
