import numpy as np

from llnm.segmentation import nodule
from llnm.segmentation.postprocess import (
    assemble_mask, decode_yolo_seg, largest_component, nms, open_mask, plausible_components,
)

from .conftest import yolo_outputs


def test_nms_drops_the_overlapping_lower_score_box_and_keeps_separate_ones():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.3], dtype=np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2]


def test_decode_applies_threshold_and_converts_centre_size_to_corners():
    out0, _ = yolo_outputs([((100, 60, 40, 20), 0.9, 0), ((101, 61, 40, 20), 0.7, 1), ((200, 200, 30, 30), 0.1, 2)])
    found = decode_yolo_seg(out0, nodule.NUM_MASKS, conf_threshold=0.25, iou_threshold=0.5)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [80, 50, 120, 70])
    assert found.scores[0] == np.float32(0.9)
    assert found.coefficients.shape == (1, nodule.NUM_MASKS) and found.coefficients[0, 0] == 1.0


def test_assembled_mask_is_the_prototype_upsampled_and_cut_to_its_box():
    out0, protos = yolo_outputs([((128, 128, 64, 64), 0.9, 3)])
    found = decode_yolo_seg(out0, nodule.NUM_MASKS, 0.25, 0.5)
    prob = assemble_mask(found.coefficients[0], protos, found.boxes[0], nodule.INPUT_SIZE)
    mask = prob > 0.5
    assert prob.shape == (nodule.INPUT_SIZE, nodule.INPUT_SIZE)
    rows, cols = np.nonzero(mask)
    assert 94 <= rows.min() <= 98 and 158 <= rows.max() <= 161 and 94 <= cols.min() <= 98
    # cut to the box: nothing outside it even where the prototype is high
    cut = assemble_mask(found.coefficients[0], protos, np.array([96, 96, 128, 128]), nodule.INPUT_SIZE) > 0.5
    assert cut.any() and not cut[:, 128:].any() and not cut[128:, :].any()


def test_largest_component_keeps_only_the_biggest_region():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:6, 2:6] = True
    mask[10:30, 10:30] = True
    out = largest_component(mask)
    assert out.sum() == 400 and not out[2:6, 2:6].any()
    assert not largest_component(np.zeros((5, 5), dtype=bool)).any()


def test_plausible_components_keep_both_lobes_but_drop_small_islands():
    mask = np.zeros((60, 120), dtype=bool)
    mask[20:40, 5:45] = True  # right lobe, 800 px
    mask[22:40, 70:110] = True  # left lobe, 720 px
    mask[2:5, 55:58] = True  # island, 9 px
    out = plausible_components(mask, 0.2)
    assert out[30, 20] and out[30, 90] and not out[3, 56]


def test_opening_cuts_the_straight_edged_tongue_a_box_cut_leaves_and_keeps_a_compact_nodule():
    yy, xx = np.mgrid[:120, :160]
    nodule_disc = (yy - 60) ** 2 + (xx - 60) ** 2 <= 30 ** 2
    tongue = (yy >= 52) & (yy < 66) & (xx >= 60) & (xx < 130)  # leak cut straight by the box at x = 130
    out = open_mask(nodule_disc | tongue, 0.35)
    assert not out[:, 100:].any()  # the tongue is gone, up to the box edge
    assert out[nodule_disc].mean() > 0.97 and not (out & ~(nodule_disc | tongue)).any()
    compact = open_mask(nodule_disc, 0.35)  # a compact mask stays as it is (up to the digital discs' corners)
    assert not (compact & ~nodule_disc).any() and compact.sum() >= 0.99 * nodule_disc.sum()
    np.testing.assert_array_equal(open_mask(nodule_disc | tongue, 0.0), nodule_disc | tongue)
    assert not open_mask(np.zeros((10, 10), dtype=bool), 0.35).any()
