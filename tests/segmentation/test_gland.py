import numpy as np
from scipy import ndimage

from llnm.segmentation import gland, segment_gland

from .conftest import FakeBackend
from .test_region import speckle


def test_gland_mask_keeps_both_lobes_and_maps_to_the_frame_grid():
    truth = np.zeros((200, 400), dtype=bool)
    truth[60:140, 20:170] = True
    truth[70:140, 230:380] = True
    truth[5:8, 195:198] = True  # speck: dropped
    mask = segment_gland(FakeBackend(gland_mask=truth), np.zeros((200, 400), dtype=np.uint8))
    assert mask is not None and mask.shape == truth.shape and mask.dtype == bool
    assert mask[100, 90] and mask[100, 300] and not mask[6, 196]
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95


def test_no_gland_is_none():
    empty = np.zeros((150, 150), dtype=bool)
    assert segment_gland(FakeBackend(gland_mask=empty), np.zeros((150, 150), dtype=np.uint8)) is None


class BrightIsGland:
    """A gland model that calls every bright pixel of its input gland: what a view's images put into
    the model can be read back from the mask."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def infer(self, model, inputs):
        batch = inputs[gland.INPUT_NAME]
        self.batches.append(batch)
        return {gland.OUTPUT_NAME: (ndimage.uniform_filter(batch, size=(1, 1, 9, 9)) > 0.35).astype(np.float32)}


def test_a_dual_display_s_gland_is_found_image_by_image():
    """Each image of a dual display fills the model's input alone (the batch holds both, each with its
    mirror image), and the gland mask of each stays on its own side of the seam."""
    left = speckle((300, 240), 1, band=(0.3, 0.7))
    right = speckle((300, 250), 2, band=(0.1, 0.4))
    frame = np.concatenate([left, right], axis=1)
    backend = BrightIsGland()
    mask = segment_gland(backend, frame)
    (batch,) = backend.batches
    assert batch.shape == (4, 1, gland.INPUT_SIZE, gland.INPUT_SIZE)
    np.testing.assert_array_equal(batch[1], batch[0][..., ::-1])
    np.testing.assert_array_equal(batch[3], batch[2][..., ::-1])
    assert mask is not None
    rows_left = np.flatnonzero(mask[:, 20:220].mean(axis=1) > 0.5)
    rows_right = np.flatnonzero(mask[:, 260:470].mean(axis=1) > 0.5)
    assert abs(rows_left[0] - 90) <= 8 and abs(rows_left[-1] - 209) <= 8, (rows_left[0], rows_left[-1])
    assert abs(rows_right[0] - 30) <= 8 and abs(rows_right[-1] - 119) <= 8, (rows_right[0], rows_right[-1])


def test_a_single_image_s_gland_is_found_whole():
    image = speckle((300, 490), 3, band=(0.3, 0.7))
    backend = BrightIsGland()
    mask = segment_gland(backend, image)
    assert backend.batches[0].shape[0] == 2
    assert mask is not None and mask[150, 20:470].all()
