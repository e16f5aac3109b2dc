"""Burned-in calipers and text are found and filled in before the nodule model sees a frame; tissue is left alone."""

import numpy as np
import pytest
from scipy import ndimage

from llnm.segmentation import nodule, segment_nodule
from llnm.segmentation.marks import find_marks, remove_marks

from .conftest import yolo_outputs


def tissue(shape=(240, 320), seed=0) -> np.ndarray:
    """Speckle smoothed to the grain of a real frame (a few pixels), mid-grey."""
    rng = np.random.default_rng(seed)
    grain = ndimage.gaussian_filter(rng.rayleigh(1.0, shape), 1.5)
    return np.clip(90 * grain / grain.mean(), 0, 255).astype(np.uint8)


def with_calipers(frame: np.ndarray, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two white "+" marks joined by a dotted line, `width` pixels wide, as a device burns them in;
    and where they are."""
    marked = frame.copy()
    drawn = np.zeros(frame.shape, dtype=bool)
    lo, hi = -((width - 1) // 2), width // 2 + 1
    for r, c in ((100, 80), (130, 200)):
        drawn[r - 6:r + 7, c + lo:c + hi] = True
        drawn[r + lo:r + hi, c - 6:c + 7] = True
    for k in range(0, 120, 3 + width):
        r, c = 100 + round(30 * k / 120), 80 + k
        drawn[r + lo:r + hi, c + lo:c + hi] = True
    marked[drawn] = 255
    return marked, drawn


def with_text(frame: np.ndarray, size: int = 13) -> tuple[np.ndarray, np.ndarray]:
    """A view label and a nodule number written in white over the tissue, `size` pixels tall (about
    3 % of a frame's height; strokes one to two pixels wide); and where they are."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(np.zeros(frame.shape, np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=size)
    for place, text in (((40, 60), "RT LOBE TRANS"), ((150, 150), "N1")):
        draw.text(place, text, fill=255, font=font)
    drawn = np.asarray(canvas) >= 128
    marked = frame.copy()
    marked[drawn] = 255
    return marked, drawn


@pytest.mark.parametrize("width, shape", [(1, (240, 320)), (2, (240, 320)), (3, (720, 1120)), (4, (720, 1120))])
def test_calipers_are_found_and_filled_from_the_tissue_around_them(width, shape):
    """White calipers one or two pixels wide, and on a frame twice DDTI's size (a larger matrix draws
    wider marks) three or four."""
    frame = tissue(shape)
    marked, drawn = with_calipers(frame, width)
    found = find_marks(marked)
    assert found[drawn].mean() >= 0.95
    cleaned = remove_marks(marked)
    assert cleaned[drawn].max() < 200
    assert np.abs(cleaned[drawn].astype(int) - frame[drawn].astype(int)).mean() < 25
    assert (marked == with_calipers(frame, width)[0]).all()  # the input is not changed


@pytest.mark.parametrize("size, shape", [(13, (240, 320)), (26, (720, 1120))])
def test_text_over_the_tissue_is_found_and_filled(size, shape):
    frame = tissue(shape, seed=2)
    marked, drawn = with_text(frame, size)
    assert find_marks(marked)[drawn].mean() >= 0.95
    assert remove_marks(marked)[drawn].max() < 200


@pytest.mark.parametrize("scale", [1, 2])
def test_tissue_and_thick_bright_structures_are_left_alone(scale):
    """Also on a frame twice the size, whose speckle grain and structures are twice as wide."""
    frame = tissue(seed=1)
    frame[150:157, :] = 230  # a bright fascia, 7 pixels thick
    frame[60:72, 200:212] = 240  # a bright blob (a macrocalcification)
    frame[100:103, 40:43] = 235  # a bright echogenic focus, 3 pixels across
    frame = np.kron(frame, np.ones((scale, scale), np.uint8))
    found = find_marks(frame)
    s = scale
    assert not found[150 * s:157 * s].any() and not found[60 * s:72 * s, 200 * s:212 * s].any()
    assert not found[100 * s:103 * s, 40 * s:43 * s].any()
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
    from llnm.segmentation.marks import opening

    frame = tissue((37, 53), seed=4)
    for size in (3, 5, 7):
        assert np.array_equal(opening(frame, size), ndimage.grey_opening(frame, size=(size, size)))
