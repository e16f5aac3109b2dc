import numpy as np

from llnm.segmentation import segment_gland

from .conftest import FakeBackend


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
