"""Burned-in calipers are found and filled in before the nodule model sees a frame; tissue is left alone."""

import numpy as np
from scipy import ndimage

from llnm.segmentation import nodule, segment_nodule
from llnm.segmentation.marks import find_marks, remove_marks

from .conftest import yolo_outputs


def tissue(shape=(240, 320), seed=0) -> np.ndarray:
    """Speckle smoothed to the grain of a real frame (a few pixels), mid-grey."""
    rng = np.random.default_rng(seed)
    grain = ndimage.gaussian_filter(rng.rayleigh(1.0, shape), 1.5)
    return np.clip(90 * grain / grain.mean(), 0, 255).astype(np.uint8)


def with_calipers(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two white "+" marks joined by a dotted line, as a device burns them in; and where they are."""
    marked = frame.copy()
    drawn = np.zeros(frame.shape, dtype=bool)
    for r, c in ((100, 80), (130, 200)):
        drawn[r - 5:r + 6, c] = True
        drawn[r, c - 5:c + 6] = True
    for k in range(0, 120, 4):
        drawn[100 + round(30 * k / 120), 80 + k] = True
    marked[drawn] = 255
    return marked, drawn


def test_calipers_are_found_and_filled_from_the_tissue_around_them():
    frame = tissue()
    marked, drawn = with_calipers(frame)
    found = find_marks(marked)
    assert found[drawn].mean() >= 0.95
    cleaned = remove_marks(marked)
    assert cleaned[drawn].max() < 200
    assert np.abs(cleaned[drawn].astype(int) - frame[drawn].astype(int)).mean() < 25
    assert (marked == with_calipers(frame)[0]).all()  # the input is not changed


def test_tissue_and_thick_bright_structures_are_left_alone():
    frame = tissue(seed=1)
    frame[150:157, :] = 230  # a bright fascia, 7 pixels thick
    frame[60:72, 200:212] = 240  # a bright blob (a macrocalcification)
    found = find_marks(frame)
    assert not found[150:157].any() and not found[60:72, 200:212].any()
    assert found.mean() < 0.01
    assert (remove_marks(np.full((50, 60), 255, np.uint8)) == 255).all()
    assert remove_marks(np.zeros((50, 60), np.uint8)).dtype == np.uint8


class RecordingBackend:
    """Answers no nodule and keeps what the nodule model was given."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def infer(self, model, inputs):
        self.batches.append(inputs[nodule.INPUT_NAME])
        out0, out1 = yolo_outputs([])
        return {nodule.OUTPUT_BOXES: np.concatenate([out0, out0]), nodule.OUTPUT_PROTOS: np.concatenate([out1, out1])}


def test_the_nodule_model_never_sees_the_calipers():
    frame = tissue((nodule.INPUT_SIZE, nodule.INPUT_SIZE))
    marked, drawn = with_calipers(frame)
    backend = RecordingBackend()
    segment_nodule(backend, marked)
    seen = backend.batches[0][0, 0] * 255.0  # the frame is letterboxed 1:1 at this size
    assert seen[drawn].max() < 200


def test_the_fast_opening_is_the_grey_opening():
    from llnm.segmentation.marks import opening3

    frame = tissue((37, 53), seed=4)
    assert np.array_equal(opening3(frame), ndimage.grey_opening(frame, size=(3, 3)))
