"""Finding the ultrasound image inside a frame that carries no SequenceOfUltrasoundRegions."""

import numpy as np
import pytest

from llnm.segmentation.region import dual_display_seam, find_image_region, image_panels

from .conftest import ultrasound_like


def scanner_frame(rng: np.random.Generator, shape=(360, 560), image_box=(20, 90, 300, 470),
                  dual_seam: int | None = None) -> np.ndarray:
    """A black interface with text-like strokes, a grey bar and depth ticks around a speckled image."""
    frame = np.zeros(shape, dtype=np.uint8)
    r0, c0, r1, c1 = image_box
    frame[r0:r1, c0:c1] = np.maximum(ultrasound_like((r1 - r0, c1 - c0), seed=int(rng.integers(1000))), 20)
    frame[r0 + 40:r0 + 60, c0 + 30:c0 + 200] = 3  # a dark (anechoic) band inside the image stays image
    if dual_seam is not None:
        frame[r0:r1, dual_seam:dual_seam + 3] = 0
    frame[100:200, c0 - 25:c0 - 17] = np.linspace(255, 0, 100, dtype=np.uint8)[:, None]  # grey bar
    for y in range(r0, r1, 30):
        frame[y:y + 2, c0 - 8:c0 - 6] = 200  # depth ticks
    for k in range(6):  # preset text: thin strokes right of the image
        frame[10 + 14 * k:20 + 14 * k, c1 + 30:c1 + 60:3] = 220
    frame[r1 + 20:r1 + 30, c0 + 20:c0 + 50:2] = 220  # side label under the image
    return frame


@pytest.mark.parametrize("seed", range(5))
def test_the_image_is_found_and_the_interface_cut_away(seed):
    rng = np.random.default_rng(seed)
    r0, c0 = int(rng.integers(5, 40)), int(rng.integers(60, 120))
    box = (r0, c0, r0 + int(rng.integers(200, 300)), c0 + int(rng.integers(250, 360)))
    region = find_image_region(scanner_frame(rng, image_box=box))
    assert region.found
    found = (region.row0, region.col0, region.row1, region.col1)
    assert max(abs(a - b) for a, b in zip(found, box)) <= 3, (found, box)


@pytest.mark.parametrize("seed", range(3))
def test_a_marker_touching_a_small_frame_s_image_does_not_widen_the_crop(seed):
    """On a small matrix an interface marker drawn just above the image (a focus or depth arrow) touches
    it, survives the opening with it, and carried two nearly empty rows into the crop (DDTI frames
    resized x 0.6: a dark strip at the top of every view). Edge rows and columns with almost no
    content are not image."""
    rng = np.random.default_rng(seed)
    box = (5, 21, 186, 316)
    frame = scanner_frame(rng, shape=(216, 336), image_box=box)
    frame[:5, 20:320] = 0
    frame[2:5, 300:310] = 120  # the marker, three rows tall, touching the image's top edge
    frame[8:186, 5:12] = 0  # no grey bar beside this small image
    region = find_image_region(frame)
    assert (region.row0, region.col0, region.row1, region.col1) == pytest.approx(box, abs=1)


def test_a_dual_display_stays_one_image():
    rng = np.random.default_rng(7)
    region = find_image_region(scanner_frame(rng, image_box=(10, 40, 300, 520), dual_seam=280))
    assert (region.col0, region.col1) == pytest.approx((40, 520), abs=3)


def test_a_frame_that_is_all_image_is_kept_whole():
    image = ultrasound_like((300, 300), seed=3)
    region = find_image_region(image)
    assert region.shape[0] >= 295 and region.shape[1] >= 295


@pytest.mark.parametrize("fill", [0, 128])
def test_a_blank_frame_is_not_cropped_to_nothing(fill):
    frame = np.full((200, 300), fill, dtype=np.uint8)
    region = find_image_region(frame)
    assert region.shape == (200, 300)


def test_paste_places_a_crop_mask_back_on_the_frame():
    rng = np.random.default_rng(1)
    frame = scanner_frame(rng)
    region = find_image_region(frame)
    mask = np.ones(region.shape, dtype=bool)
    back = region.paste(mask, frame.shape)
    assert back.sum() == mask.sum() and back[region.row0, region.col0] and not back[0, 0]


def speckle(shape, seed: int, band: tuple[float, float] | None = None) -> np.ndarray:
    """Ultrasound-like speckle whose grains span a few pixels (neighbouring columns alike, as on real
    frames), with an optional brighter band of rows (a gland)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grains = ndimage.gaussian_filter(rng.rayleigh(1.0, shape), 1.5)
    level = np.full(shape, 60.0)
    if band is not None:
        level[int(shape[0] * band[0]):int(shape[0] * band[1])] = 140.0
    return np.clip(level * grains / grains.mean(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gap", [0, 3])
def test_a_dual_display_s_seam_is_found(gap):
    """Two images side by side (abutting, or with a dark gap the image region keeps whole): the second
    begins at the seam, where the speckle stops continuing."""
    left, right = speckle((300, 240), 1), speckle((300, 250), 2)
    dual = np.concatenate([left, np.zeros((300, gap), dtype=np.uint8), right], axis=1)
    seam = dual_display_seam(dual)
    assert seam is not None and 240 <= seam <= 240 + gap + 1, seam
    assert image_panels(dual) == [(0, seam), (seam, dual.shape[1])]


@pytest.mark.parametrize("change", ["none", "shadow", "calipers", "bright line"])
def test_a_single_image_is_not_split(change):
    """One image is never cut in two: not at a shadow's edge (the grey level changes, not the speckle),
    not at calipers standing one above the other in the middle, not at a bright vertical line."""
    image = speckle((300, 490), 3).astype(np.float32)
    if change == "shadow":
        image[:, 245:] *= 0.35
    elif change == "calipers":
        for row in (40, 120, 200, 280):
            image[row - 6:row + 7, 245] = 255
            image[row, 239:252] = 255
    elif change == "bright line":
        image[20:280, 244:246] = 230
    image = image.astype(np.uint8)
    assert dual_display_seam(image) is None
    assert image_panels(image) == [(0, 490)]
