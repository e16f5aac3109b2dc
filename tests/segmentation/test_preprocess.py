import numpy as np
import pytest

from llnm.segmentation.preprocess import box_to_frame, letterbox, rebox, to_grey, unletterbox


@pytest.mark.parametrize("shape", [(100, 200), (300, 120), (256, 256), (37, 500)])
def test_letterbox_round_trip_returns_the_frame(shape):
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    frame = (120 + 60 * np.sin(yy / h * 3) * np.cos(xx / w * 2)).astype(np.uint8)
    frame[h // 4: h // 2, w // 4: w // 2] = 250  # a bright block: it must come back where it was
    boxed, box = letterbox(frame, 256, 114)
    assert boxed.shape == (256, 256) and box.frame_shape == shape
    assert (boxed[: box.pad_y] == 114).all() and (boxed[:, : box.pad_x] == 114).all()
    back = unletterbox(boxed.astype(np.float32), box)
    assert back.shape == shape
    assert np.median(np.abs(back - frame)) < 3
    block = back > 200
    truth = frame > 200
    assert 2 * (block & truth).sum() / (block.sum() + truth.sum()) > 0.8


@pytest.mark.parametrize("shape", [(360, 560), (300, 120), (256, 256)])
def test_a_smaller_view_maps_onto_the_full_view_where_the_frame_has_it(shape):
    """A frame letterboxed into 0.7 of the side sits centred and smaller; `rebox` puts what the model
    saw there back onto the full view's grid, so the two can be averaged pixel by pixel."""
    h, w = shape
    frame = np.full(shape, 60, dtype=np.uint8)
    frame[h // 3: h // 2, w // 5: w // 2] = 250
    full, full_box = letterbox(frame, 320, 114)
    small, small_box = letterbox(frame, 320, 114, fill=0.7)
    assert small_box.scale == pytest.approx(0.7 * full_box.scale)
    assert small_box.pad_x > full_box.pad_x and small_box.pad_y > full_box.pad_y
    assert (small[: small_box.pad_y] == 114).all() and (small[:, : small_box.pad_x] == 114).all()
    moved = rebox(small.astype(np.float32), small_box, full_box) > 200
    truth = full > 200
    assert 2 * (moved & truth).sum() / (moved.sum() + truth.sum()) > 0.9
    same = rebox(full.astype(np.float32), full_box, full_box)  # the pad is no part of the frame: 0
    inside = np.s_[full_box.pad_y:full_box.pad_y + full_box.height, full_box.pad_x:full_box.pad_x + full_box.width]
    np.testing.assert_array_equal(same[inside], full[inside])
    assert same.sum() == full[inside].astype(np.float32).sum()
    with pytest.raises(ValueError, match="fill"):
        letterbox(frame, 320, 114, fill=1.5)
    with pytest.raises(ValueError, match="different frames"):
        rebox(small.astype(np.float32), small_box, letterbox(frame[:10], 320, 114)[1])


def test_box_to_frame_undoes_scale_and_padding():
    _, box = letterbox(np.zeros((100, 200), dtype=np.uint8), 256, 0)
    assert box.scale == pytest.approx(1.28) and box.pad_y == 64 and box.pad_x == 0
    assert box_to_frame(np.array([0, 64, 128, 128]), box) == (0, 0, 100, 50)


def test_to_grey_accepts_rgb_and_rejects_other_shapes():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 30
    assert to_grey(rgb).shape == (4, 5) and to_grey(rgb)[0, 0] == 10
    with pytest.raises(ValueError):
        to_grey(np.zeros((2, 2, 2, 2)))
