"""The fast binary openings and closings give exactly what scipy.ndimage gives with the same element."""

import numpy as np
import pytest
from scipy import ndimage

from llnm.segmentation.morphology import disc, disc_opening, square_closing, square_opening


def masks(count: int = 60):
    rng = np.random.default_rng(7)
    for k in range(count):
        h, w = (int(v) for v in rng.integers(5, 70, 2))
        noise = rng.random((h, w)) < rng.uniform(0.3, 0.9)
        yield ndimage.binary_opening(noise) if k % 2 else noise  # blobs and salt


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 10])
def test_square_opening_and_closing_are_scipys(size):
    square = np.ones((size, size), dtype=bool)
    for mask in masks():
        assert np.array_equal(square_opening(mask, size), ndimage.binary_opening(mask, square))
        assert np.array_equal(square_closing(mask, size), ndimage.binary_closing(mask, square))


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 8])
def test_disc_opening_is_scipys(radius):
    for mask in masks():
        assert np.array_equal(disc_opening(mask, radius), ndimage.binary_opening(mask, disc(radius)))


def test_disc_opening_removes_a_thin_tongue_and_keeps_the_body():
    mask = np.zeros((60, 80), dtype=bool)
    yy, xx = np.mgrid[:60, :80]
    mask[(yy - 30) ** 2 + (xx - 30) ** 2 <= 15 ** 2] = True
    mask[28:32, 45:75] = True  # a straight-edged tongue four pixels wide
    opened = disc_opening(mask, 4)
    assert not opened[28:32, 50:75].any() and opened[30, 30] and opened.sum() > 0.9 * np.pi * 15 ** 2
    assert not disc_opening(np.ones((3, 3), dtype=bool), 4).any()
