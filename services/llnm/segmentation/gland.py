"""The gland model at run time: letterbox, U-Net++ through the inference backend, plausible regions.

The gland mask keeps the largest region and every other region at least `MIN_REGION_FRACTION` of
its area: a transverse view can show both lobes (and the isthmus) as separate regions, while small
islands are noise. A mask with fewer than `MIN_GLAND_PIXELS` frame pixels is "no gland found".
"""

from __future__ import annotations

import numpy as np

from llnm.inference.backend import THYROID_SEG, InferenceBackend
from llnm.segmentation.postprocess import plausible_components
from llnm.segmentation.marks import remove_marks
from llnm.segmentation.preprocess import letterbox, to_grey, unletterbox

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
    boxed, box = letterbox(remove_marks(to_grey(image)), INPUT_SIZE, PAD_VALUE)
    return (boxed.astype(np.float32) / 255.0)[None, None], box


def segment_gland(backend: InferenceBackend, image: np.ndarray) -> np.ndarray | None:
    """(H, W) bool gland mask of an (H, W) uint8 greyscale B-mode crop, or None when no gland is found.

    The frame and its mirror image go through the model as one batch of two and their probabilities
    are averaged (flip test-time augmentation: +0.009 Dice on TG3K train frames, +0.007 on val)."""
    tensor, box = gland_input(image)
    batch = np.concatenate([tensor, tensor[..., ::-1]])
    prob = np.asarray(backend.infer(THYROID_SEG, {INPUT_NAME: batch})[OUTPUT_NAME], dtype=np.float32)
    mean = (prob[0, 0] + prob[1, 0, :, ::-1]) / 2
    return gland_from_probability(np.ascontiguousarray(mean), box)


def gland_from_probability(prob: np.ndarray, box) -> np.ndarray | None:
    """Post-processing of one image's probability map (kept apart from the backend call for tests)."""
    mask = plausible_components(unletterbox(prob, box) > THRESHOLD, MIN_REGION_FRACTION)
    if int(mask.sum()) < MIN_GLAND_PIXELS:
        return None
    return mask
