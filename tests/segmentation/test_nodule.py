import numpy as np

from llnm import quality
from llnm.segmentation import NoduleDetection, nodule, segment_nodule
from llnm.segmentation.nodule import select_index

from .conftest import FakeBackend, yolo_outputs


def test_index_nodule_is_the_largest_among_confident_candidates():
    scores = np.array([0.9, 0.75, 0.6])
    areas = np.array([100, 400, 900])
    assert select_index(scores, areas) == 1  # 0.6 < 0.8 x 0.9: too unsure to be the index nodule
    assert select_index(scores, np.array([100, 100, 900])) == 0  # equal area: the more confident
    assert select_index(scores, np.zeros(3)) is None


def test_segment_nodule_reports_the_index_nodule_in_frame_pixels():
    # frame S/2 x S -> scale 1, padded S/4 rows above and below in the S model grid; positions in S/256 units
    k = nodule.INPUT_SIZE / 256
    out = yolo_outputs([((60 * k, 128 * k, 40 * k, 40 * k), 0.9, 0), ((180 * k, 128 * k, 80 * k, 80 * k), 0.8, 1),
                        ((230 * k, 100 * k, 16 * k, 16 * k), 0.95, 2), ((128 * k, 20 * k, 30 * k, 20 * k), 0.99, 3)])
    frame = np.random.default_rng(0).integers(60, 100, (nodule.INPUT_SIZE // 2, nodule.INPUT_SIZE)).astype(np.uint8)
    found = segment_nodule(FakeBackend(nodule_outputs=out), frame)
    assert isinstance(found, NoduleDetection)
    assert found.mask.shape == frame.shape and found.mask.dtype == bool
    assert found.candidates == 3  # the 0.99 one lies in the letterbox padding: not in the frame, ignored
    assert found.score == np.float32(0.8)  # the 80-unit one: largest among those >= 0.8 x best
    x0, y0, x1, y1 = (v / k for v in found.box)
    assert abs(x0 - 140) <= 4 and abs(x1 - 220) <= 4 and abs(y0 - 24) <= 4 and abs(y1 - 104) <= 4
    assert found.mask[int(64 * k), int(180 * k)] and not found.mask[int(64 * k), int(60 * k)]


def test_no_detection_is_none_not_an_exception():
    assert segment_nodule(FakeBackend(), np.zeros((200, 300), dtype=np.uint8)) is None
    textured = np.random.default_rng(0).integers(60, 100, (nodule.INPUT_SIZE,) * 2).astype(np.uint8)
    noise = yolo_outputs([((100, 100, 30, 30), 0.05, 0)])  # below even the fallback threshold
    assert segment_nodule(FakeBackend(nodule_outputs=noise), textured) is None


def test_an_unsure_detection_is_still_the_index_nodule_when_nothing_is_confident():
    """Not "no nodule found" when the detector saw one weakly: its low score lets the gate decline the
    view as low confidence instead; beside a confident detection an unsure one is never a candidate."""
    textured = np.random.default_rng(0).integers(60, 100, (nodule.INPUT_SIZE,) * 2).astype(np.uint8)  # scale 1
    weak = yolo_outputs([((100, 100, 30, 30), 0.15, 0)])
    found = segment_nodule(FakeBackend(nodule_outputs=weak), textured)
    assert found is not None and found.score == np.float32(0.15) and found.candidates == 1
    assert found.score < quality.MIN_NODULE_SCORE  # the gate will not use it
    both = yolo_outputs([((60, 60, 20, 20), 0.5, 0), ((170, 170, 80, 80), 0.2, 1)])
    found = segment_nodule(FakeBackend(nodule_outputs=both), textured)
    assert found.score == np.float32(0.5) and found.candidates == 1 and found.mask[60, 60]


def test_the_mirror_image_refines_the_index_nodule_only_where_it_sees_the_same_nodule():
    from llnm.segmentation.nodule import nodule_from_outputs, nodule_input

    _, box = nodule_input(np.zeros((nodule.INPUT_SIZE,) * 2, dtype=np.uint8))  # frame = model grid
    frame0, frame1 = yolo_outputs([((100, 100, 40, 40), 0.9, 0)])
    alone = nodule_from_outputs(frame0, frame1, box)
    elsewhere0, elsewhere1 = yolo_outputs([((60, 200, 40, 40), 0.9, 1)])  # mirrored: another place
    unrelated = nodule_from_outputs(np.concatenate([frame0, elsewhere0]), np.concatenate([frame1, elsewhere1]), box)
    np.testing.assert_array_equal(unrelated.mask, alone.mask)
    narrow0, narrow1 = yolo_outputs([((nodule.INPUT_SIZE - 104, 100, 32, 40), 0.8, 2)])  # the same nodule, 8 px narrower
    refined = nodule_from_outputs(np.concatenate([frame0, narrow0]), np.concatenate([frame1, narrow1]), box)
    assert refined.score == alone.score and refined.mask.sum() < alone.mask.sum()
    assert alone.mask[100, 84] and not refined.mask[100, 84]  # seen by one of the two: averaged below 0.5
    assert refined.mask[100, 100] and refined.mask[100, 116]


def test_a_tongue_the_box_cuts_straight_is_removed_from_the_index_nodule():
    from llnm.segmentation.nodule import nodule_from_outputs, nodule_input

    _, box = nodule_input(np.zeros((nodule.INPUT_SIZE, nodule.INPUT_SIZE), dtype=np.uint8))
    out0, protos = yolo_outputs([((140, 128, 120, 64), 0.9, 0)])
    grid = protos.shape[-1]
    yy, xx = np.mgrid[:grid, :grid] * (nodule.INPUT_SIZE / grid)
    disc = (yy - 128) ** 2 + (xx - 128) ** 2 <= 32 ** 2
    tongue = (abs(yy - 128) <= 8) & (xx >= 128)  # the prototype leaks right, beyond the (widened) box
    protos[0, 0] = np.where(disc | tongue, 10.0, -10.0)
    found = nodule_from_outputs(out0, protos, box)
    assert found.mask[128, 128] and found.mask[128, 155]
    assert not found.mask[:, 175:].any()  # without the opening it runs on to the cut at x = 218


def test_the_index_nodule_is_chosen_by_agreement_with_the_mirror_image():
    """A large detection the mirror image does not see loses to a smaller one both orientations see;
    the view's reported score stays the detection's own (the quality gate judges that)."""
    from llnm.segmentation.nodule import nodule_from_outputs, nodule_input

    size = nodule.INPUT_SIZE
    _, box = nodule_input(np.zeros((size, size), dtype=np.uint8))  # frame = model grid
    frame0, frame1 = yolo_outputs([((80, 100, 80, 80), 0.9, 0), ((220, 200, 40, 40), 0.8, 1)])
    mirror0, mirror1 = yolo_outputs([((size - 220, 200, 40, 40), 0.85, 1)])  # sees only the second one
    both0, both1 = np.concatenate([frame0, mirror0]), np.concatenate([frame1, mirror1])  # as the mirror sees them
    found = nodule_from_outputs(both0, both1, box)
    assert found.mask[200, 220] and not found.mask[100, 80]
    assert found.score == np.float32(0.8)
    alone = nodule_from_outputs(frame0, frame1, box)  # no mirror image: the largest confident one
    assert alone.mask[100, 80] and not alone.mask[200, 220]
    seen_both = yolo_outputs([((size - 220, 200, 40, 40), 0.85, 1), ((size - 80, 100, 80, 80), 0.9, 0)])
    larger = nodule_from_outputs(np.concatenate([frame0, seen_both[0]]),
                                 np.concatenate([frame1, seen_both[1]]), box)
    assert larger.mask[100, 80]  # both seen in both orientations: the largest confident one again


def test_the_smaller_view_refines_the_mask_but_never_chooses_the_index_nodule():
    """Rows 2-3 (the frame at SMALL_FILL of the side, and its mirror): their detections of the index
    nodule enter the mask's mean on the frame's grid; a nodule only they see changes nothing; the choice
    of the index nodule stays with the frame and its full-size mirror image."""
    from llnm.segmentation.nodule import nodule_from_outputs, nodule_input

    from .conftest import mirror_view, smaller_view

    size = nodule.INPUT_SIZE
    frame = np.zeros((size, size), dtype=np.uint8)
    boxes = [nodule_input(frame)[1], nodule_input(frame, nodule.SMALL_FILL)[1]]
    frame0, frame1 = yolo_outputs([((100, 100, 40, 40), 0.9, 0)])
    pair = (np.concatenate([frame0, mirror_view(frame0)]), np.concatenate([frame1, frame1[..., ::-1]]))
    alone = nodule_from_outputs(*pair, boxes[0])
    same0, same1 = smaller_view(frame0, frame1, nodule.SMALL_FILL)
    seen = nodule_from_outputs(np.concatenate([pair[0], same0, mirror_view(same0)]),
                               np.concatenate([pair[1], same1, same1[..., ::-1]]), boxes)
    assert seen.score == alone.score and abs(int(seen.mask.sum()) - int(alone.mask.sum())) < 0.1 * alone.mask.sum()
    narrow0, narrow1 = smaller_view(*yolo_outputs([((108, 100, 24, 40), 0.8, 1)]), nodule.SMALL_FILL)
    refined = nodule_from_outputs(np.concatenate([pair[0], narrow0, mirror_view(narrow0)]),
                                  np.concatenate([pair[1], narrow1, narrow1[..., ::-1]]), boxes)
    assert refined.mask[100, 108] and not refined.mask[100, 84]  # three of four views see x = 84 only once
    other0, other1 = smaller_view(*yolo_outputs([((230, 220, 60, 60), 0.95, 2)]), nodule.SMALL_FILL)
    unrelated = nodule_from_outputs(np.concatenate([pair[0], other0, mirror_view(other0)]),
                                    np.concatenate([pair[1], other1, other1[..., ::-1]]), boxes)
    np.testing.assert_array_equal(unrelated.mask, alone.mask)


def test_the_smaller_views_do_not_vote_on_which_nodule_is_the_index_nodule():
    """Two nodules both seen by the frame and its mirror image: the larger one is the index nodule, even
    when the smaller views see only the other (an agreement read over all four views would flip it)."""
    from llnm.segmentation.nodule import nodule_from_outputs, nodule_input

    from .conftest import mirror_view, smaller_view

    size = nodule.INPUT_SIZE
    boxes = [nodule_input(np.zeros((size, size), dtype=np.uint8))[1],
             nodule_input(np.zeros((size, size), dtype=np.uint8), nodule.SMALL_FILL)[1]]
    frame0, frame1 = yolo_outputs([((90, 100, 80, 80), 0.9, 0), ((230, 220, 40, 40), 0.85, 1)])
    only_small0, only_small1 = smaller_view(*yolo_outputs([((230, 220, 40, 40), 0.85, 1)]), nodule.SMALL_FILL)
    found = nodule_from_outputs(
        np.concatenate([frame0, mirror_view(frame0), only_small0, mirror_view(only_small0)]),
        np.concatenate([frame1, frame1[..., ::-1], only_small1, only_small1[..., ::-1]]), boxes)
    assert found.mask[100, 90] and not found.mask[220, 230]
    assert found.score == np.float32(0.9)
