"""Binary openings and closings that stay fast on large frames, with the results of scipy's.

scipy.ndimage's binary erosion costs the frame's pixels times the structuring element's, and both
grow with the frame: the image region's square closing and the nodule mask's disc opening made a
1904 x 1224 frame take 15 s to segment, 1120 x 720 1.9 s, 560 x 360 0.3 s
(`bench/frame_size_latency.py`). A square is two lines, so its erosion and dilation are done along
the columns and then the rows; a disc's erosion and dilation are thresholds of the exact Euclidean
distance transform. Both give exactly what `ndimage.binary_opening` / `binary_closing` give with the
same element and the default border (outside the image counts as background; tests compare them on
random masks).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _square(operation, mask: np.ndarray, size: int) -> np.ndarray:
    """`operation` (binary erosion or dilation) by a size x size square, as a column then a row."""
    return operation(operation(mask, np.ones((size, 1), dtype=bool)), np.ones((1, size), dtype=bool))


def square_opening(mask: np.ndarray, size: int) -> np.ndarray:
    """ndimage.binary_opening(mask, np.ones((size, size)))."""
    return _square(ndimage.binary_dilation, _square(ndimage.binary_erosion, mask, size), size)


def square_closing(mask: np.ndarray, size: int) -> np.ndarray:
    """ndimage.binary_closing(mask, np.ones((size, size)))."""
    return _square(ndimage.binary_erosion, _square(ndimage.binary_dilation, mask, size), size)


def disc(radius: int) -> np.ndarray:
    """The disc of integer `radius`: offsets (dy, dx) with dy^2 + dx^2 <= radius^2."""
    span = np.arange(-radius, radius + 1) ** 2
    return np.add.outer(span, span) <= radius * radius


def disc_opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """ndimage.binary_opening(mask, disc(radius)): a pixel survives the erosion when the nearest
    background pixel (the image's outside included) lies farther than `radius`; the dilation keeps
    every pixel within `radius` of a survivor."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    eroded = ndimage.distance_transform_edt(padded) > radius
    if not eroded.any():
        return np.zeros(np.shape(mask), dtype=bool)
    return (ndimage.distance_transform_edt(~eroded) <= radius)[1:-1, 1:-1]
