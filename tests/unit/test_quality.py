"""llnm.quality on crafted mask pairs: each check declines what it is for and lets a good view through."""

from __future__ import annotations

import numpy as np
import pytest

from llnm import quality as Q

SHAPE = (100, 120)
SPACING = (0.2, 0.2)  # mm per pixel: the good nodule is 17 x 21 px = 3.4 x 4.2 mm


def ellipse(cy: float, cx: float, ry: float, rx: float, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


GLAND = ellipse(50, 60, 35, 45)  # about 41% of the image
NODULE = ellipse(50, 55, 8, 10)  # inside the gland, compact


def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.normal(110, 15, SHAPE)
    img[GLAND] += 20
    img[NODULE] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


def codes(image_=None, nodule=NODULE, gland=GLAND, score=0.9, spacing=SPACING) -> list[str]:
    q = Q.assess_view(image() if image_ is None else image_, nodule, gland, score, spacing)
    return [r.code for r in q.reasons]


def test_a_good_view_passes_every_check():
    q = Q.assess_view(image(), NODULE, GLAND, 0.9, SPACING)
    assert q.passed and q.reasons == ()
    assert q.nodule_inside_gland == 1.0 and q.solidity > 0.9
    assert Q.GLAND_AREA_RANGE[0] < q.gland_area_share < Q.GLAND_AREA_RANGE[1]
    assert Q.NODULE_AREA_RANGE[0] < q.nodule_area_share < Q.NODULE_AREA_RANGE[1]
    assert Q.assess_view(image(), NODULE, GLAND, 0.9, None).passed  # uncalibrated views pass
    assert Q.declined(q) is None


def test_blank_image():
    assert Q.BLANK_IMAGE in codes(np.full(SHAPE, 90, np.uint8))
    assert Q.BLANK_IMAGE not in codes()


def test_no_gland_and_no_nodule():
    assert codes(gland=None) == [Q.NO_GLAND]
    assert codes(gland=np.zeros(SHAPE, bool)) == [Q.NO_GLAND]
    assert codes(nodule=None) == [Q.NO_NODULE]
    q = Q.assess_view(image(), None, None, 0.0, SPACING)
    assert [r.code for r in q.reasons] == [Q.NO_GLAND, Q.NO_NODULE] and q.nodule_inside_gland is None


def test_low_confidence():
    assert codes(score=Q.MIN_NODULE_SCORE - 0.01) == [Q.LOW_CONFIDENCE]
    assert codes(score=Q.MIN_NODULE_SCORE) == []


def test_nodule_outside_the_gland():
    outside = ellipse(12, 12, 10, 10)
    assert not (outside & GLAND).any()
    q = Q.assess_view(image(), outside, GLAND, 0.9, SPACING)
    assert [r.code for r in q.reasons] == [Q.NODULE_OUTSIDE_GLAND] and q.nodule_inside_gland == 0.0
    # a nodule breaking through the capsule still lies mostly inside: not declined
    rim = ellipse(50, 60 + 45 - 6, 8, 10)
    inside = np.count_nonzero(rim & GLAND) / np.count_nonzero(rim)
    assert Q.MIN_INSIDE_GLAND <= inside < 1.0 and codes(nodule=rim) == []


def test_implausible_sizes():
    small = ellipse(50, 60, 4, 5)  # a small nodule (2.2 mm) in a gland of 1% of the image
    assert codes(nodule=small, gland=ellipse(50, 60, 6, 7)) == [Q.IMPLAUSIBLE_SIZE]  # gland too small
    assert codes(nodule=small, gland=GLAND) == []
    assert codes(gland=np.ones(SHAPE, bool)) == [Q.IMPLAUSIBLE_SIZE]  # gland the whole image
    big_gland = ellipse(50, 60, 49, 59)  # 76% of the image
    assert codes(nodule=ellipse(50, 60, 45, 55), gland=big_gland) == [Q.IMPLAUSIBLE_SIZE]  # nodule 65%
    assert codes(nodule=ellipse(50, 60, 30, 40), gland=big_gland) == []  # nodule 31%
    too_long = Q.assess_view(image(), NODULE, GLAND, 0.9, (5.0, 5.0)).reasons  # 105 mm long (and 50 cm deep)
    assert {r.code for r in too_long} == {Q.IMPLAUSIBLE_SIZE} and any("long axis 105" in r.text for r in too_long)
    assert codes(spacing=(0.05, 0.05)) == [Q.IMPLAUSIBLE_SIZE]  # 1 mm long
    tiny = ellipse(50, 60, 1, 1)  # 5 pixels: below the area share
    assert Q.IMPLAUSIBLE_SIZE in codes(nodule=tiny, spacing=None)


def test_a_calibrated_view_deeper_than_a_neck_examination_is_declined():
    """A pelvic view routed by mistake (gdcm-US-ALOKA-16: 15 cm deep) gives a "gland" and a "nodule" that
    pass every mask check; the depth a calibrated image shows tells the examination apart. A deep
    goiter view (9 cm) and an uncalibrated view pass."""
    q = Q.assess_view(image(), NODULE, GLAND, 0.9, (1.5, 1.5))  # 100 rows: 15 cm; nodule 31 mm
    assert [r.code for r in q.reasons] == [Q.IMPLAUSIBLE_SIZE] and "15.0 cm of depth" in q.reasons[0].text
    assert codes(spacing=(0.9, 0.9)) == [] and codes(spacing=None) == []


def test_irregular_mask():
    blobs = ellipse(40, 40, 6, 6) | ellipse(60, 80, 6, 6)  # two fragments inside the gland
    assert codes(nodule=blobs) == [Q.IRREGULAR_MASK]


def test_solidity():
    assert Q.solidity(ellipse(50, 60, 20, 20)) == pytest.approx(1.0, abs=0.1)
    assert Q.solidity(ellipse(40, 40, 6, 6) | ellipse(60, 80, 6, 6)) < Q.MIN_SOLIDITY
    line = np.zeros(SHAPE, bool)
    line[10, 5:50] = True
    assert Q.solidity(line) == pytest.approx(1.0)  # a straight line is convex
    assert Q.solidity(np.zeros(SHAPE, bool)) == 1.0


def _quality(*reason_codes: str) -> Q.ViewQuality:
    return Q.ViewQuality(tuple(Q.Reason(c, c) for c in reason_codes), None, None, None, None)


def test_every_code_has_a_priority():
    assert sorted(Q.PRIORITY) == sorted(Q.CODES) and len(set(Q.CODES)) == len(Q.CODES)


def test_study_reason_takes_the_most_telling_reason_of_all_views():
    assert Q.study_reason([_quality(Q.NO_GLAND), _quality(Q.NODULE_OUTSIDE_GLAND)]).code == Q.NODULE_OUTSIDE_GLAND
    assert Q.study_reason([_quality(Q.NO_GLAND, Q.NO_NODULE), _quality(Q.BLANK_IMAGE)]).code == Q.BLANK_IMAGE
    assert Q.study_reason([_quality(Q.LOW_CONFIDENCE), _quality(Q.IMPLAUSIBLE_SIZE)]).code == Q.IMPLAUSIBLE_SIZE
    assert Q.study_reason([_quality(Q.IRREGULAR_MASK, Q.IMPLAUSIBLE_SIZE)]).code == Q.IRREGULAR_MASK
    assert Q.study_reason([_quality(Q.NO_NODULE), _quality(Q.NO_GLAND)]).code == Q.NO_GLAND
    assert Q.study_reason([_quality(Q.NODULE_OUTSIDE_GLAND), _quality()]) is None  # one view passed


def test_only_no_nodule_and_declined():
    assert Q.only_no_nodule([_quality(Q.NO_NODULE), _quality(Q.NO_NODULE)])
    assert not Q.only_no_nodule([_quality(Q.NO_NODULE), _quality(Q.NO_GLAND, Q.NO_NODULE)])
    assert not Q.only_no_nodule([])
    assert Q.declined(None) is None and Q.declined(_quality()) is None
    assert Q.declined(_quality(Q.NO_NODULE)) is None  # a finding, not a decline
    assert Q.declined(_quality(Q.NO_NODULE, Q.BLANK_IMAGE)).code == Q.BLANK_IMAGE


def test_view_declined_names_why_a_view_was_left_out():
    from llnm.study import ViewResult

    def view(quality, used):
        return ViewResult(None, None, quality=quality, used=used)

    assert Q.view_declined(view(_quality(), True)) is None
    assert Q.view_declined(view(_quality(Q.NO_NODULE), False)) is None
    assert Q.view_declined(view(None, False)) is None  # never assessed
    assert Q.view_declined(view(_quality(Q.IRREGULAR_MASK), False)).code == Q.IRREGULAR_MASK
    # passed the gate yet not used: only TMDL's out-of-distribution check drops such a view
    assert Q.view_declined(view(_quality(), False)).code == Q.OUT_OF_DISTRIBUTION


def test_the_size_check_measures_the_long_axis_the_result_reports():
    """A small nodule lying at 45 degrees: its bounding box is 1.9 mm wide, its long axis (what the SR
    and summary.json report) 2.6 mm; the gate reads the same long axis, so it is not declined as too small."""
    from llnm.features.extract import axes_extent

    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    u, v = ((yy - 50) + (xx - 60)) / np.sqrt(2), ((yy - 50) - (xx - 60)) / np.sqrt(2)
    tilted = (u / (1.3 / 0.075)) ** 2 + (v / (0.45 / 0.075)) ** 2 <= 1.0
    rows, cols = np.nonzero(tilted)
    assert max(np.ptp(rows) + 1, np.ptp(cols) + 1) * 0.075 < 2.0 < axes_extent(tilted, (0.075, 0.075))[0]
    assert codes(nodule=tilted, spacing=(0.075, 0.075)) == []
