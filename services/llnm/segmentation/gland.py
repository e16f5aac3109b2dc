"""The gland model at run time: letterbox, U-Net++ through the inference backend, plausible regions.

The gland mask keeps the largest region and every other region at least `MIN_REGION_FRACTION` of
its area: a transverse view can show both lobes (and the isthmus) as separate regions, while small
islands are noise. A mask with fewer than `MIN_GLAND_PIXELS` frame pixels is "no gland found".

A dual display (llnm.segmentation.region.dual_display_seam) is segmented image by image: each fills the
model's 128-pixel input alone, and no gland runs across the seam, so no distance is measured from one
image into the other (select cases: the true nodule's mean share inside the gland on the 25 dual
displays 0.833 -> 0.931, the gland 36 % -> 31 % of the image; the model card).
"""

from __future__ import annotations

import numpy as np

from llnm.inference.backend import THYROID_SEG, InferenceBackend
from llnm.segmentation.postprocess import plausible_components
from llnm.segmentation.marks import remove_marks
from llnm.segmentation.preprocess import Letterbox, letterbox, to_grey, unletterbox
from llnm.segmentation.region import image_panels

INPUT_SIZE = 128  # model input side (pixels); fixed in the ONNX graph
INPUT_NAME = "image"  # (N, 1, 128, 128) float32 in [0, 1]
OUTPUT_NAME = "probability"  # (N, 1, 128, 128) float32, sigmoid applied in the graph
PAD_VALUE = 0  # black, as in the training frames (TG3K pads with black)
THRESHOLD = 0.5
MIN_REGION_FRACTION = 0.1
MIN_GLAND_PIXELS = 64


def gland_input(image: np.ndarray):
    """The model input for one frame (burned-in calipers filled in: llnm.segmentation.marks), and where
    the frame sits in it."""
    return _boxed(remove_marks(to_grey(image)))


def _boxed(grey: np.ndarray):
    """The model input for a grey image whose marks are already filled in, and where it sits in it."""
    boxed, box = letterbox(grey, INPUT_SIZE, PAD_VALUE)
    return (boxed.astype(np.float32) / 255.0)[None, None], box


def gland_batch(image: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]], list[Letterbox]]:
    """The model's batch for one view: each image of it (two for a dual display) and its mirror image,
    with the column range and letterbox of each image."""
    grey = remove_marks(to_grey(image))  # once for the whole view: the seam and both images read it
    panels = image_panels(grey, marks_filled=True)
    inputs = [_boxed(grey[:, c0:c1]) for c0, c1 in panels]
    batch = np.concatenate([np.concatenate([tensor, tensor[..., ::-1]]) for tensor, _ in inputs])
    return np.ascontiguousarray(batch), panels, [box for _, box in inputs]


def gland_from_batch(prob: np.ndarray, panels: list[tuple[int, int]], boxes: list[Letterbox],
                     shape: tuple[int, int]) -> np.ndarray | None:
    """The view's gland mask from the batch's probabilities: per image, the mean of it and its mirror
    image, post-processed and placed in its columns; None when no image holds a gland."""
    prob = np.asarray(prob, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    for k, ((c0, c1), box) in enumerate(zip(panels, boxes)):
        mean = (prob[2 * k, 0] + prob[2 * k + 1, 0, :, ::-1]) / 2
        part = gland_from_probability(np.ascontiguousarray(mean), box)
        if part is not None:
            mask[:, c0:c1] = part
    return mask if mask.any() else None


def segment_gland(backend: InferenceBackend, image: np.ndarray) -> np.ndarray | None:
    """(H, W) bool gland mask of an (H, W) uint8 greyscale B-mode crop, or None when no gland is found.

    Each image goes through the model with its mirror image, in one batch, and their probabilities
    are averaged (flip test-time augmentation: +0.009 Dice on TG3K train frames, +0.007 on val)."""
    batch, panels, boxes = gland_batch(image)
    prob = backend.infer(THYROID_SEG, {INPUT_NAME: batch})[OUTPUT_NAME]
    return gland_from_batch(prob, panels, boxes, np.asarray(image).shape[:2])


def gland_from_probability(prob: np.ndarray, box) -> np.ndarray | None:
    """Post-processing of one image's probability map (kept apart from the backend call for tests)."""
    mask = plausible_components(unletterbox(prob, box) > THRESHOLD, MIN_REGION_FRACTION)
    if int(mask.sum()) < MIN_GLAND_PIXELS:
        return None
    return mask
