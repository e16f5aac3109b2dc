"""Each feature of extract_features on synthetic views whose answer is known."""

import numpy as np
import pytest

from llnm.features import clinical_vector, crop_resize, extract_features, lobe_position
from llnm.features.heatmap import tokens_to_heatmap

from .heatmap_reference import full_frame_heatmap


def view(nodule_rows=(40, 50), nodule_cols=(30, 50), inside=50, outside=100):
    image = np.full((80, 120), 20, dtype=np.uint8)
    gland = np.zeros((80, 120), dtype=bool)
    gland[20:70, 10:110] = True
    image[gland] = outside
    nodule = np.zeros_like(gland)
    nodule[slice(*nodule_rows), slice(*nodule_cols)] = True
    image[nodule] = inside
    return image, gland, nodule


def test_echogenicity_is_inside_minus_ring_outside():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, (0.1, 0.1))
    assert f.echogenicity == pytest.approx((50 - 100) / 255, abs=1e-6)


def test_shape_and_size_follow_the_spacing():
    image, gland, nodule = view()  # 10 rows x 20 columns
    f = extract_features(image, gland, nodule, (0.1, 0.1))
    assert f.aspect_ratio == pytest.approx(0.5)
    assert f.length_mm == pytest.approx(2.0, abs=0.05)
    assert f.width_mm == pytest.approx(1.0, abs=0.05)
    f = extract_features(image, gland, nodule, (0.2, 0.1))  # rows twice as tall: 2 mm x 2 mm
    assert f.aspect_ratio == pytest.approx(1.0)
    assert f.capsule_distance_mm == pytest.approx(min(21 * 0.1, 21 * 0.2))  # columns 30 -> 9, rows 40 -> 19


def test_uncalibrated_view_reports_pixels_only():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, None)
    assert f.capsule_distance_mm is None and f.length_mm is None and f.width_mm is None
    assert f.capsule_distance_px == 21.0  # column 30 is 21 columns from column 9, outside the gland
    assert f.length_px == pytest.approx(20.0, abs=0.5)


def test_feature_images_have_the_model_size_and_range():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, (0.1, 0.1), size=32)
    images = f.images()
    assert images.shape == (3, 32, 32) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    # texture: the nodule (50) is darker than its surround (100) at the crop centre
    assert f.x_t[16, 16] == pytest.approx(50 / 255, abs=0.02)
    # location: CPDT values only on the nodule, whose centre is well inside the gland
    assert f.x_l.max() > 0 and f.x_l[0, 0] == 0


def test_location_map_is_brighter_near_the_capsule():
    image, gland, nodule_deep = view((40, 50), (50, 70))
    _, _, nodule_edge = view((20, 30), (50, 70))
    deep = extract_features(image, gland, nodule_deep, None)
    edge = extract_features(image, gland, nodule_edge, None)
    assert edge.x_l.max() > deep.x_l.max()
    assert edge.capsule_distance_px == 1.0


def test_margin_mosaic_is_seeded_and_samples_the_boundary():
    image, gland, nodule = view((30, 60), (30, 80))
    a = extract_features(image, gland, nodule, None, seed=3)
    b = extract_features(image, gland, nodule, None, seed=3)
    c = extract_features(image, gland, nodule, None, seed=4)
    np.testing.assert_array_equal(a.x_m, b.x_m)
    assert not np.array_equal(a.margin_points, c.margin_points)
    assert len(a.margin_points) == 16
    # every sampled point is a boundary pixel of the nodule
    for r, col in a.margin_points.astype(int):
        assert nodule[r, col] and not nodule[r - 1:r + 2, col - 1:col + 2].all()
    # each patch straddles the edge: both nodule grey and surround grey appear
    assert a.x_m.min() < 60 / 255 and a.x_m.max() > 90 / 255


def test_position_in_the_lobe():
    image, gland, _ = view()
    left = np.zeros_like(gland)
    left[40:45, 15:20] = True
    right = np.zeros_like(gland)
    right[40:45, 100:105] = True
    assert extract_features(image, gland, left, None).location["vertical"] == "upper"
    assert extract_features(image, gland, right, None).location == {
        "vertical": "lower", "horizontal": "lateral", "depth": "anterior"}
    assert lobe_position(0.5, 0.1) == {"vertical": "middle", "horizontal": "lateral", "depth": "anterior"}


def test_extrathyroidal_nodule_has_zero_capsule_distance():
    image, gland, _ = view()
    nodule = np.zeros_like(gland)
    nodule[15:25, 40:50] = True  # crosses the top capsule at row 20
    f = extract_features(image, gland, nodule, (0.1, 0.1))
    assert f.extrathyroidal and f.capsule_distance_mm == 0.0


def test_clinical_vector_neutral_values():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, (0.1, 0.1))
    known = clinical_vector("M", 60, f)
    unknown = clinical_vector(None, None, f)
    assert known[0] == 1.0 and known[1] == pytest.approx(1.0)
    assert unknown[0] == 0.0 and unknown[1] == 0.0
    assert clinical_vector("F", 45, f)[0] == -1.0


def test_crop_resize_identity():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(crop_resize(a, (0, 0, 4, 4), 4, order=1), a, atol=1e-5)


def test_heatmap_puts_a_location_token_on_its_part_of_the_gland_box():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, None, size=32)
    importance = np.zeros(3 * 16)  # 4 x 4 tokens per feature image
    importance[0] = 1.0  # top-left token of x_l
    heat = tokens_to_heatmap(importance, f, image.shape)
    assert heat.shape == image.shape and heat.max() == pytest.approx(1.0)
    r, c = np.unravel_index(heat.argmax(), heat.shape)
    r0, c0, r1, c1 = f.location_box
    assert r < r0 + (r1 - r0) / 4 + 2 and c < c0 + (c1 - c0) / 4 + 2


@pytest.mark.parametrize("nodule_rows, nodule_cols, size, seed", [
    ((40, 50), (30, 50), 32, 1),  # 4 x 4 tokens per feature image
    ((25, 60), (12, 105), 48, 2),  # a large nodule: the kernel is longer than the frame is high
    ((62, 70), (95, 110), 48, 3),  # near the frame's corner: the reflection at its edges
    ((40, 50), (30, 50), 32, 4),
])
def test_heatmap_equals_the_full_frame_filter(nodule_rows, nodule_cols, size, seed):
    image, gland, nodule = view(nodule_rows, nodule_cols)
    f = extract_features(image, gland, nodule, None, size=size)
    importance = np.random.default_rng(seed).random(3 * 16).astype(np.float32)  # 4 x 4 tokens each
    if seed == 4:
        importance[:] = 0.0
        importance[5] = 1.0  # one token: the map is one smoothed box
    fast = tokens_to_heatmap(importance, f, image.shape)
    full = full_frame_heatmap(importance, f, image.shape)
    assert fast.dtype == np.float32 and fast.shape == full.shape
    np.testing.assert_allclose(fast, full, rtol=0, atol=1e-6)


def test_heatmap_equals_the_full_frame_filter_on_a_phantom_sized_view():
    rng = np.random.default_rng(5)
    image = np.full((514, 602), 20, dtype=np.uint8)
    gland = np.zeros(image.shape, bool)
    gland[100:330, 160:600] = True
    nodule = np.zeros_like(gland)
    nodule[120:300, 250:450] = True
    image[gland] = 100
    image[nodule] = 50
    f = extract_features(image, gland, nodule, (0.1, 0.1), size=48)
    importance = rng.random(3 * 16).astype(np.float32)
    np.testing.assert_allclose(tokens_to_heatmap(importance, f, image.shape),
                               full_frame_heatmap(importance, f, image.shape), rtol=0, atol=1e-6)


def test_an_all_zero_importance_gives_an_all_zero_map():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, None, size=32)
    heat = tokens_to_heatmap(np.zeros(48, np.float32), f, image.shape)
    assert heat.dtype == np.float32 and not heat.any()


def test_length_width_shape_input_is_the_nodule_size_in_mm():
    image, gland, nodule = view()  # 10 rows x 20 columns: 2.0 x 1.0 mm at 0.1 mm, 4.0 x 2.0 mm at 0.2 mm
    small = clinical_vector("F", 50, extract_features(image, gland, nodule, (0.1, 0.1)), "length_width")
    large = clinical_vector("F", 50, extract_features(image, gland, nodule, (0.2, 0.2)), "length_width")
    ratio_small = clinical_vector("F", 50, extract_features(image, gland, nodule, (0.1, 0.1)))
    ratio_large = clinical_vector("F", 50, extract_features(image, gland, nodule, (0.2, 0.2)))
    assert small.shape == (5,) and ratio_small.shape == (4,)
    np.testing.assert_allclose(small[:3], ratio_small[:3])
    assert small[3] == pytest.approx(2 * np.log(2.0 / 10), abs=0.06)  # length 2 mm
    assert small[4] == pytest.approx(2 * np.log(1.0 / 10), abs=0.1)  # width 1 mm
    np.testing.assert_allclose(large[3:] - small[3:], 2 * np.log(2.0), atol=1e-4)  # twice the size
    np.testing.assert_allclose(ratio_large, ratio_small)  # the ratio alone cannot tell them apart
    uncalibrated = clinical_vector("F", 50, extract_features(image, gland, nodule, None), "length_width")
    np.testing.assert_array_equal(uncalibrated[3:], [0.0, 0.0])  # no size without a spacing: neutral
    with pytest.raises(ValueError):
        clinical_vector("F", 50, extract_features(image, gland, nodule, None), "area")


def test_the_position_inputs_are_the_capsule_distance_in_mm_and_the_place_in_the_gland():
    image, gland, nodule = view()
    f = extract_features(image, gland, nodule, (0.1, 0.1))
    x = clinical_vector("F", 50, f, "ratio", "map_and_position")
    np.testing.assert_allclose(x[:4], clinical_vector("F", 50, f))
    assert x.shape == (7,)
    assert x[4] == pytest.approx(np.log1p(f.capsule_distance_mm) - 1.0)
    u, v = f.position_uv
    np.testing.assert_allclose(x[5:], [(v - 0.5) * 2, (u - 0.5) * 2], atol=1e-6)
    assert -1.0 <= x[5] <= 1.0 and -1.0 <= x[6] <= 1.0
    uncalibrated = clinical_vector("F", 50, extract_features(image, gland, nodule, None), "ratio", "map_and_position")
    assert uncalibrated[4] == 0.0  # no distance in mm without a spacing: neutral
    np.testing.assert_allclose(uncalibrated[5:], x[5:], atol=1e-6)  # the place in the gland needs no spacing
    with pytest.raises(ValueError):
        clinical_vector("F", 50, f, "ratio", "distance")


def test_area_sampling_averages_detail_finer_than_a_pixel_instead_of_aliasing_it():
    rows, cols = np.mgrid[0:384, 0:384]
    fine = np.random.default_rng(0).normal(0.0, 1.0, (384, 384)).astype(np.float32)  # pixel-scale speckle
    coarse = (rows // 96 % 2).astype(np.float32)  # bands 96 px wide
    box = (0, 0, 384, 384)
    point = crop_resize(fine, box, 48)  # 8 px per output pixel: each sample sees 4 input pixels
    area = crop_resize(fine, box, 48, antialias=True)
    assert point.std() > 0.4
    assert area.std() < 0.15 and area.mean() == pytest.approx(0.0, abs=0.05)
    # coarse structure survives: the bands' interiors keep their values
    banded = crop_resize(coarse, box, 48, antialias=True)
    assert banded[6, 24] == pytest.approx(0.0, abs=0.02) and banded[18, 24] == pytest.approx(1.0, abs=0.02)
    # not reduced (a box no larger than the output): no filtering at all
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(crop_resize(a, (0, 0, 4, 4), 4, antialias=True), a, atol=1e-5)


def test_area_sampling_changes_only_the_texture_and_margin_images():
    rng = np.random.default_rng(0)
    image, gland, nodule = view(nodule_rows=(25, 65), nodule_cols=(20, 100))
    image = np.clip(image.astype(float) + rng.normal(0, 30, image.shape), 0, 255).astype(np.uint8)
    point = extract_features(image, gland, nodule, (0.1, 0.1), size=16)
    area = extract_features(image, gland, nodule, (0.1, 0.1), size=16, sampling="area")
    np.testing.assert_array_equal(point.x_l, area.x_l)
    assert point.echogenicity == area.echogenicity and point.length_mm == area.length_mm
    assert area.x_t.std() < point.x_t.std() and area.x_m.std() < point.x_m.std()  # speckle averaged out
    with pytest.raises(ValueError):
        extract_features(image, gland, nodule, (0.1, 0.1), sampling="nearest")


def test_energy_sampling_makes_a_coarse_texture_bright_in_x_t_and_leaves_the_rest_as_area():
    """sampling "energy": x_t is the texture's local contrast (band-pass 0.4-1.2 mm), so a nodule with a
    coarse internal texture shows bright there and a uniform one dark whatever its grey level; x_m,
    x_l and the measurements are those of "area"."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:200, :200]
    gland = (yy - 100) ** 2 + (xx - 100) ** 2 <= 90 ** 2
    nodule = (yy - 100) ** 2 + (xx - 100) ** 2 <= 45 ** 2  # 9 mm across at 0.1 mm
    image = np.where(gland, 100, 20) - 50 * nodule
    speckled = np.clip(image.astype(float) + rng.normal(0, 8, image.shape), 0, 255)
    field = ndimage.gaussian_filter(rng.normal(size=image.shape), 6.0)  # patches of ~1 mm at 0.1 mm
    textured = speckled.copy()
    textured[nodule] += (40.0 * field / field.std())[nodule]
    brighter = np.clip(speckled + 60.0 * nodule, 0, 255)  # a uniform nodule, only brighter
    plain_e, textured_e, brighter_e = (extract_features(np.clip(im, 0, 255).astype(np.uint8), gland, nodule, (0.1, 0.1),
                                                        size=16, sampling="energy")
                                       for im in (speckled, textured, brighter))
    centre = (slice(6, 10), slice(6, 10))
    assert textured_e.x_t[centre].mean() > 4 * plain_e.x_t[centre].mean()
    assert brighter_e.x_t[centre].mean() < 0.25 * textured_e.x_t[centre].mean()
    assert (plain_e.x_t >= 0).all()
    area = extract_features(np.clip(textured, 0, 255).astype(np.uint8), gland, nodule, (0.1, 0.1), size=16,
                            sampling="area")
    np.testing.assert_array_equal(area.x_m, textured_e.x_m)
    np.testing.assert_array_equal(area.x_l, textured_e.x_l)
    assert area.echogenicity == textured_e.echogenicity
    uncalibrated = extract_features(np.clip(textured, 0, 255).astype(np.uint8), gland, nodule, None, size=16,
                                    sampling="energy")
    assert uncalibrated.x_t[centre].mean() > 4 * plain_e.x_t[centre].mean()


def test_keeping_the_aspect_frames_the_gland_in_a_square_at_one_scale():
    """location_aspect "keep" (the paper keeps the aspect ratio): a round nodule stays round in x_l
    inside a lobe twice as wide as deep; "stretch" (the shipped model) squeezes it."""
    image, gland, nodule = view()  # gland 50 rows x 100 columns
    yy, xx = np.mgrid[:80, :120]
    nodule = (yy - 45) ** 2 + (xx - 60) ** 2 <= 10 ** 2
    stretched = extract_features(image, gland, nodule, (0.1, 0.1), size=48)
    kept = extract_features(image, gland, nodule, (0.1, 0.1), size=48, location_aspect="keep")
    for f in (stretched, kept):
        r0, c0, r1, c1 = f.location_box
        assert (r0 + r1) / 2 == pytest.approx(44.5, abs=0.6) and (c0 + c1) / 2 == pytest.approx(59.5, abs=0.6)
    r0, c0, r1, c1 = kept.location_box
    assert r1 - r0 == pytest.approx(c1 - c0) == pytest.approx(1.1 * 100)

    def extent(x_l):
        rows, cols = np.nonzero(x_l > 0)
        return np.ptp(rows) + 1, np.ptp(cols) + 1

    h, w = extent(kept.x_l)
    assert abs(h - w) <= 1  # round stays round
    h, w = extent(stretched.x_l)
    assert h > 1.6 * w  # stretched: twice as tall as wide
    assert kept.capsule_distance_mm == stretched.capsule_distance_mm  # measurements do not depend on it
    with pytest.raises(ValueError):
        extract_features(image, gland, nodule, (0.1, 0.1), location_aspect="fit")
