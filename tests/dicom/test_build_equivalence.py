"""The build-speed shortcuts of the DICOM writers (work on a mask's bounding box instead of the whole
view) give exactly what the whole-view computation gave."""

import numpy as np
import pytest
from scipy import ndimage

from llnm.dicom.common import outline
from llnm.dicom.key_image import HEATMAP_ALPHA, _blend_heat, _edge, _heat_colour


def masks():
    rng = np.random.default_rng(4)
    out = []
    for shape, box in (((120, 160), (30, 40, 70, 100)), ((120, 160), (0, 0, 25, 30)),
                       ((120, 160), (100, 130, 120, 160)), ((50, 60), (0, 0, 50, 60))):
        mask = np.zeros(shape, bool)
        r0, c0, r1, c1 = box
        mask[r0:r1, c0:c1] = rng.random((r1 - r0, c1 - c0)) > 0.35
        mask = ndimage.binary_opening(mask)
        out.append(mask)
    return out


@pytest.mark.parametrize("index", range(4))
def test_outline_of_the_cut_mask_is_the_outline_of_the_whole_view(index):
    mask = masks()[index]
    got = outline(mask)
    labels, n = ndimage.label(mask)
    biggest = labels == (int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1)))) + 1)
    shifted = outline(np.pad(biggest, ((5, 9), (3, 11))))  # whole component, other frame, other offset
    np.testing.assert_array_equal(got, shifted - np.array([3.0, 5.0]))


def test_outline_of_an_empty_mask_is_none():
    assert outline(np.zeros((10, 10), bool)) is None


def test_outline_of_a_one_pixel_mask_is_that_pixels_edges():
    """Vertices are in pixel-centre units like a traced outline's (the SR adds 0.5 for DICOM's corner
    origin): a lone pixel at row 4, column 6 is the square from (5.5, 3.5) to (6.5, 4.5)."""
    mask = np.zeros((10, 10), bool)
    mask[4, 6] = True
    got = outline(mask)
    assert got[:, 0].min() == 5.5 and got[:, 0].max() == 6.5 and got[:, 1].min() == 3.5 and got[:, 1].max() == 4.5


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("width", [1, 3])
def test_edge_on_the_box_equals_the_whole_view_erosion(index, width):
    mask = masks()[index]
    whole = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    np.testing.assert_array_equal(_edge(mask, width), whole)


def test_blending_only_the_heat_box_equals_blending_the_whole_view():
    rng = np.random.default_rng(2)
    part = rng.random((80, 100, 3)).astype(np.float32) * 255
    heat = np.zeros((80, 100), np.float32)
    heat[20:50, 30:70] = rng.random((30, 40)).astype(np.float32)
    weight = HEATMAP_ALPHA * np.clip(heat, 0, 1)[..., None]
    whole = part * (1 - weight) + _heat_colour(heat) * weight
    fast = part.copy()
    _blend_heat(fast, heat)
    np.testing.assert_array_equal(fast, whole)
