"""The Eq. 15 location risk map: Norm(sum of registered x_l over metastatic views - the same over
non-metastatic ones), one map per view orientation."""

import csv

import numpy as np
import pytest
from PIL import Image

from .conftest import ellipse
from llnm.model.atlas import UNKNOWN, LocationAtlas, OrientationMap, atlas_from_layout, build_atlas, location_risk
from llnm.model.data import read_layout

pytest.importorskip("ants")

SHAPE = (80, 100)


def _views(orientation, positive_at, negative_at, n=12, seed=0):
    """Glands of varying size; positives' nodules at `positive_at`, negatives' at `negative_at`,
    both given as (row, column) fractions of the gland's half-axes from its centre."""
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n):
        ry, rx = rng.uniform(25, 32), rng.uniform(35, 45)
        gland = ellipse(SHAPE, 40, 50, ry, rx)
        y = i % 2
        fy, fx = positive_at if y else negative_at
        views.append((gland, ellipse(SHAPE, 40 + fy * ry, 50 + fx * rx, 6, 6) & gland, y, orientation))
    return views


def test_eq15_is_the_minmax_scaled_difference_of_the_class_sums():
    meta = np.array([[3.0, 0.0], [1.0, 0.0]], np.float32)
    non = np.array([[0.0, 2.0], [1.0, 0.0]], np.float32)
    m = OrientationMap(np.ones((2, 2), np.float32), meta, non, views=4)
    np.testing.assert_allclose(m.risk, [[1.0, 0.0], [0.4, 0.4]])  # (diff + 2) / 5
    assert m.neutral == pytest.approx(0.4)
    flat = OrientationMap(np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), 0)
    assert not flat.risk.any() and flat.neutral == 0.0


def test_a_map_of_positives_on_one_side_ranks_a_nodule_there_higher(tmp_path):
    atlas = build_atlas(_views("transverse", (0.0, -0.5), (0.0, 0.5)), size=32)
    assert set(atlas.maps) == {"transverse"}
    m = atlas.maps["transverse"]
    assert m.views == 12 and m.meta_sum.sum() > 0 and m.non_sum.sum() > 0
    assert float(m.risk.min()) == 0.0 and float(m.risk.max()) == pytest.approx(1.0)
    assert m.risk[:, :12].max() > 0.9 and m.risk[:, 20:].min() < 0.1
    path = tmp_path / "atlas.npz"
    atlas.save(path)
    loaded = LocationAtlas.load(path)
    np.testing.assert_array_equal(loaded.maps["transverse"].risk, m.risk)
    gland = ellipse((90, 120), 45, 60, 30, 45)
    left = location_risk(loaded, gland, ellipse((90, 120), 45, 38, 6, 6), "transverse")
    right = location_risk(loaded, gland, ellipse((90, 120), 45, 82, 6, 6), "transverse")
    assert left > 0.6 > 0.4 > right


def test_transverse_and_longitudinal_views_get_their_own_maps():
    """Transverse positives sit laterally (left), longitudinal positives in the upper third: pooled,
    each orientation's signal would be smeared by the other's negatives."""
    views = _views("transverse", (0.0, -0.5), (0.0, 0.5)) + _views("longitudinal", (-0.5, 0.0), (0.5, 0.0), seed=1)
    atlas = build_atlas(views, size=32)
    assert set(atlas.maps) == {"transverse", "longitudinal"}
    tr, lo = atlas.maps["transverse"].risk, atlas.maps["longitudinal"].risk
    assert np.abs(tr - lo).max() > 0.5
    assert lo[:12, :].max() > 0.9 and lo[20:, :].min() < 0.1  # upper rows high, lower rows low
    gland = ellipse((90, 120), 45, 60, 30, 45)
    upper, lower = ellipse((90, 120), 30, 60, 6, 6), ellipse((90, 120), 60, 60, 6, 6)
    assert location_risk(atlas, gland, upper, "longitudinal") > location_risk(atlas, gland, lower, "longitudinal")
    left = ellipse((90, 120), 45, 38, 6, 6)
    assert location_risk(atlas, gland, left, "transverse") > location_risk(atlas, gland, left, "longitudinal")
    either = location_risk(atlas, gland, left)  # orientation unknown: mean over the maps
    assert either == pytest.approx(np.mean([location_risk(atlas, gland, left, o) for o in atlas.maps]))


def _write_layout(tmp_path, views, names=None) -> None:
    """A training folder of `views` (gland, nodule, llnm, orientation), two per study; `names`: what the
    views.csv `view` column holds instead of the orientation."""
    rows = []
    for k, (gland, nodule, y, orientation) in enumerate(views):
        for name, mask in (("g", gland), ("n", nodule)):
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{k}{name}.png")
        rows.append({"study_uid": str(k // 2), "image": f"{k}g.png", "gland_mask": f"{k}g.png",
                     "nodule_mask": f"{k}n.png", "view": names[k] if names else orientation, "llnm": y})
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        fh.write("study_uid,llnm,risk_level,p_true,age,sex,report\n")
        fh.writelines(f"{k},{k % 2},,,,,\n" for k in range(len(rows) // 2))
    with (tmp_path / "views.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["study_uid", "image", "gland_mask", "nodule_mask", "view"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_the_layout_view_column_chooses_the_map_and_shares_the_views(tmp_path):
    transverse = _views("transverse", (0.0, -0.5), (0.0, 0.5), n=6)
    longitudinal = _views("longitudinal", (-0.5, 0.0), (0.5, 0.0), n=6, seed=1)
    _write_layout(tmp_path, [v for pair in zip(transverse, longitudinal) for v in pair])
    atlas = atlas_from_layout(tmp_path, max_views=8, size=32)
    assert {k: m.views for k, m in atlas.maps.items()} == {"transverse": 4, "longitudinal": 4}


def test_a_view_column_that_names_frames_is_no_orientation(tmp_path):
    """A views.csv whose `view` holds other labels (frame names, as real-studies wrote them until
    2026-12-04: one atlas map per frame) reads as orientation unknown: one map for all of them."""
    views = _views("transverse", (0.0, -0.5), (0.0, 0.5), n=8)
    _write_layout(tmp_path, views, names=[f"{100 + k}_1" for k in range(len(views))])
    assert {v.orientation for s in read_layout(tmp_path) for v in s.views} == {None}
    atlas = atlas_from_layout(tmp_path, max_views=8, size=32)
    assert {k: m.views for k, m in atlas.maps.items()} == {"unknown": 8}


def test_an_atlas_of_the_earlier_pooled_format_still_loads(tmp_path):
    risk = np.linspace(0.1, 0.6, 16, dtype=np.float32).reshape(4, 4)
    np.savez_compressed(tmp_path / "old.npz", template=np.ones((4, 4), np.float32), risk=risk,
                        coverage=np.ones((4, 4), np.float32), prior_rate=0.3)
    atlas = LocationAtlas.load(tmp_path / "old.npz")
    assert set(atlas.maps) == {UNKNOWN}
    assert np.array_equal(np.argsort(atlas.maps[UNKNOWN].risk, axis=None), np.argsort(risk, axis=None))
