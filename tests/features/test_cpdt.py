"""CPDT on hand-worked masks: an 11 x 11 frame with a 9 x 9 gland (rows and columns 1..9).

Distance of gland pixel (r, c) to the nearest pixel outside the gland = min(r, c, 10 - r, 10 - c),
so the central point (5, 5) has d_max = 5."""

import numpy as np
import pytest

from llnm.features import cpdt


def gland() -> np.ndarray:
    g = np.zeros((11, 11), dtype=bool)
    g[1:10, 1:10] = True
    return g


def nodule_at(*pixels: tuple[int, int]) -> np.ndarray:
    n = np.zeros((11, 11), dtype=bool)
    for r, c in pixels:
        n[r, c] = True
    return n


def test_nodule_at_the_central_point_is_dark():
    out = cpdt(gland(), nodule_at((5, 5)))
    assert out.d_max_px == 5.0
    assert out.min_distance_px == 5.0
    assert out.x_l[5, 5] == 0.0  # 1 - 5/5
    assert out.x_l.sum() == 0.0
    assert not out.extrathyroidal


def test_nodule_touching_the_capsule():
    out = cpdt(gland(), nodule_at((1, 5), (2, 5)))
    assert out.min_distance_px == 1.0
    assert out.x_l[1, 5] == pytest.approx(1 - 1 / 5)
    assert out.x_l[2, 5] == pytest.approx(1 - 2 / 5)
    assert out.x_l[0, 5] == 0.0  # not a nodule pixel
    assert out.min_distance_mm is None  # uncalibrated


def test_nodule_partly_outside_the_gland_has_distance_zero():
    out = cpdt(gland(), nodule_at((0, 5), (1, 5)))
    assert out.extrathyroidal
    assert out.min_distance_px == 0.0
    assert out.x_l[0, 5] == 1.0
    assert out.x_l[1, 5] == pytest.approx(0.8)


def test_nodule_fully_outside_the_gland():
    out = cpdt(gland(), nodule_at((0, 0), (0, 1)))
    assert out.extrathyroidal and out.min_distance_px == 0.0
    assert out.min_distance_mm is None


def test_anisotropic_spacing_in_mm():
    # pixel (5, 2): 2 columns from the capsule (0.1 mm each) vs 5 rows (0.2 mm each) -> 0.2 mm
    out = cpdt(gland(), nodule_at((5, 2)), spacing_mm=(0.2, 0.1))
    assert out.min_distance_px == 2.0
    assert out.min_distance_mm == pytest.approx(0.2)
    # pixel (2, 5): 2 rows (0.4 mm) vs 5 columns (0.5 mm) -> 0.4 mm
    out = cpdt(gland(), nodule_at((2, 5)), spacing_mm=(0.2, 0.1))
    assert out.min_distance_mm == pytest.approx(0.4)


def test_gland_filling_the_image_is_measured_to_the_border():
    g = np.ones((5, 5), dtype=bool)
    out = cpdt(g, nodule_at((2, 2))[:5, :5])
    assert out.d_max_px == 3.0 and out.min_distance_px == 3.0


def test_empty_masks_are_rejected():
    with pytest.raises(ValueError):
        cpdt(gland(), np.zeros((11, 11), dtype=bool))
