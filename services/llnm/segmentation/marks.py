"""Burned-in measurement marks (calipers, their dotted lines, their labels, text written over the
tissue), found and filled in before the segmentation models see a frame (`nodule_input`,
`gland_input`) and before the pipeline's features read it (`llnm.pipeline.without_marks`).

Sonographers measure the nodule on the frame they store, and the device burns the calipers into the
pixels: small bright "+" or "x" marks at the nodule's edges, often joined by a dotted line, with a
number or letter beside them, and sometimes a label of the view written over the image. The models
learned frames that mostly carry none. With calipers drawn on every outlined nodule of the select cases
(`bench/segmentation_devices.py --marks calipers`) the nodule Dice fell from 0.784 to 0.664 and the
frames with IoU >= 0.5 from 87 % to 65 %: the model follows the marks instead of the nodule's edge.

A mark is thin and bright against what surrounds it: a pixel of at least MIN_LEVEL that a grey
opening (which removes every structure narrower than its side) lowers by at least MIN_RISE. Its
neighbours that stand above the opening by half as much go with it (the halo JPEG and anti-aliasing
leave around a line). The marked pixels are filled from the tissue around them (a normalised Gaussian
convolution of the unmarked pixels, FILL_SIGMA pixels wide).

The opening is 3 x 3 on frames up to MARK_SCALE pixels (DDTI's 560 x 360, TG3K, the phantom) and grows
with the frame (`opening_size`): a device with a larger matrix draws its calipers and text wider, and
its speckle is as much coarser. On the select cases' frames resized x 2, calipers three pixels wide cost
the nodule Dice 0.46 and text 0.07 with a fixed 3 x 3 opening, 0.01 and 0.00 with this one; on frames of
DDTI's size nothing changes. A 5 x 5 opening on every frame was measured and dropped: it also finds
three-pixel marks on small frames, but fills the speckle of TG3K's noisy frames (gland Dice -0.02) and
more echogenic foci (model card, "Burned-in marks on other devices"). An echogenic focus is rarely
that thin and bright: on the 377 DDTI frames the rule fills 0.003-0.03 % of the outlined nodules'
pixels whatever their calcification label, and nothing on phantom views.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: a mark pixel is at least this bright (calipers and labels are drawn white or near white)
MIN_LEVEL = 220
#: ... and stands at least this far above its grey opening (thin: narrower than the opening)
MIN_RISE = 80
#: frames up to this many pixels on their longer side get a 3 x 3 opening, up to twice as many 5 x 5, ...:
#: a device with a larger matrix draws wider marks, and its speckle grain is as much coarser
MARK_SCALE = 640
#: width (pixels) of the Gaussian that fills a mark from the unmarked tissue around it
FILL_SIGMA = 2.0


def _extreme(image: np.ndarray, axis: int, pick, radius: int = 1) -> np.ndarray:
    """The min or max (`pick`) of each pixel and its `radius` neighbours on both sides along `axis`,
    edges mirrored (as scipy.ndimage's default)."""
    padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in range(2)], mode="symmetric")
    n = image.shape[axis]
    out = padded.take(range(0, n), axis)
    for shift in range(1, 2 * radius + 1):
        out = pick(out, padded.take(range(shift, n + shift), axis))
    return out


def opening(image: np.ndarray, size: int = 3) -> np.ndarray:
    """The `size` x `size` grey opening (scipy.ndimage.grey_opening, size (size, size), odd size), as
    separable numpy min/max: twenty times faster on a frame, and this runs before both models on every
    view."""
    radius = size // 2
    eroded = _extreme(_extreme(image, 0, np.minimum, radius), 1, np.minimum, radius)
    return _extreme(_extreme(eroded, 0, np.maximum, radius), 1, np.maximum, radius)


def opening_size(shape: tuple[int, ...]) -> int:
    """Side of the opening for a frame of `shape`: 3 up to MARK_SCALE pixels, 5 up to twice that, ..."""
    return 2 * max(1, -(-max(shape[:2]) // MARK_SCALE)) + 1


def find_marks(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of thin bright marks in an (H, W) uint8 frame."""
    grey = np.asarray(image, dtype=np.int16)
    rise = grey - opening(grey, opening_size(grey.shape))
    core = (grey >= MIN_LEVEL) & (rise >= MIN_RISE)
    if not core.any():
        return core
    near = _extreme(_extreme(core, 0, np.maximum), 1, np.maximum)  # the 3 x 3 dilation of the core
    return near & (rise >= MIN_RISE // 2)


def fill(image: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """`image` with the `marks` pixels replaced by a Gaussian-weighted mean of the unmarked pixels near them."""
    out = np.array(image, dtype=np.uint8, copy=True)
    if not marks.any():
        return out
    keep = (~marks).astype(np.float32)
    weighted = ndimage.gaussian_filter(out.astype(np.float32) * keep, FILL_SIGMA, truncate=2.5)
    weights = ndimage.gaussian_filter(keep, FILL_SIGMA, truncate=2.5)
    filled = weighted / np.maximum(weights, 1e-3)
    out[marks] = np.clip(np.rint(filled[marks]), 0, 255).astype(np.uint8)
    return out


def remove_marks(image: np.ndarray) -> np.ndarray:
    """The (H, W) uint8 frame with its burned-in marks filled in (a copy; `image` is not changed)."""
    return fill(image, find_marks(image))
