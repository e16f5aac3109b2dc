"""The pipeline's TMDL steps, each with views that DIFFER (issue 15: with two identical views the tests
could not tell a mean from the first view, a reversed group order from the right one, or the closest
view from the farthest): the batch layout, the aggregation over views, the choice of the index view
(one unit only: mm among calibrated views, never mm against pixels), and analyse_study wired to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from llnm.features import clinical_vector, extract_features
from llnm.inference.backend import TMDL
from llnm.model.config import GROUPS, preset
from llnm.pipeline import GROUP_KEEPS, aggregate, analyse_study, choose_index_view, tmdl_batch
from llnm.study import StudyInput, View

CONFIG = preset("tiny")
SHAPE = (90, 120)


def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


GLAND = ellipse(45, 60, 35, 50)


def image(nodule: np.ndarray, brightness: float) -> np.ndarray:
    img = np.random.default_rng(0).normal(brightness, 15, SHAPE)
    img[GLAND] += 20
    img[nodule] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


#: two views that differ in everything: the nodule's place (distance to the capsule), size and grey level
NEAR = ellipse(20, 60, 8, 14)  # close to the top of the gland
FAR = ellipse(45, 60, 10, 12)  # in the middle
VIEWS = [(image(FAR, 120), FAR), (image(NEAR, 90), NEAR)]


def features(index: int, spacing=(0.2, 0.2)):
    img, nodule = VIEWS[index]
    return extract_features(img, GLAND, nodule, spacing, size=CONFIG.image_size)


def study(**kw) -> StudyInput:
    return StudyInput(study_uid="1.2.3", views=[View(img, (0.2, 0.2)) for img, _ in VIEWS], report_text=None,
                      age_years=52, sex="M", **kw)


def test_the_batch_holds_each_view_in_its_own_five_rows_with_the_group_masks():
    f = [features(0), features(1)]
    states = np.zeros((1, CONFIG.text_tokens, CONFIG.text_dim), np.float32)
    mask = np.zeros((1, CONFIG.text_tokens), np.float32)
    feed = tmdl_batch(f, study(), states, mask)
    assert feed["images"].shape[0] == 10 and feed["group_keep"].shape == (10, len(GROUPS))
    for k in range(2):
        rows = slice(5 * k, 5 * k + 5)
        assert np.array_equal(feed["images"][rows], np.repeat(f[k].images()[None], 5, axis=0))
        assert np.array_equal(feed["group_keep"][rows], GROUP_KEEPS)
    assert not np.array_equal(feed["images"][0], feed["images"][5])  # the views really differ
    assert not np.array_equal(feed["clinical"][0], feed["clinical"][5])  # x_e and x_s are per view


def test_the_batch_carries_the_scalar_inputs_the_model_was_trained_with():
    f = [features(0), features(1)]
    states = np.zeros((1, CONFIG.text_tokens, CONFIG.text_dim), np.float32)
    mask = np.zeros((1, CONFIG.text_tokens), np.float32)
    feed = tmdl_batch(f, study(), states, mask, "length_width")
    assert feed["clinical"].shape == (10, 5)
    for k in range(2):  # each view's own length and width in mm, in its own rows
        np.testing.assert_allclose(feed["clinical"][5 * k:5 * k + 5],
                                   np.repeat(clinical_vector("M", 52, f[k], "length_width")[None], 5, axis=0))
    assert tmdl_batch(f, study(), states, mask)["clinical"].shape == (10, 4)  # the shipped model: the ratio
    with_position = tmdl_batch(f, study(), states, mask, "ratio", "map_and_position")["clinical"]
    assert with_position.shape == (10, 7)
    np.testing.assert_allclose(with_position[5:10], np.repeat(
        clinical_vector("M", 52, f[1], "ratio", "map_and_position")[None], 5, axis=0))


def outputs(view_probabilities: list[float], group_effects: dict[str, float], tokens: int = 48) -> dict[str, np.ndarray]:
    """TMDL rows as tmdl_batch lays them out: per view, all groups kept then each group occluded; occluding
    group g lowers that view's logit by group_effects[g]."""
    prob, logit, risk, importance = [], [], [], []
    for v, p in enumerate(view_probabilities):
        full = float(np.log(p / (1 - p)))
        rows = [full] + [full - group_effects[g] for g in GROUPS]
        logit += rows
        prob += [1 / (1 + np.exp(-x)) for x in rows]
        risk += [[1 - p, p * 0.25, p * 0.75]] * 5
        importance += [np.full(tokens, (v + 1) / 2)] + [np.zeros(tokens)] * 4  # 3 groups of 4 x 4 tokens
    return {"probability": np.array(prob, np.float32), "logit": np.array(logit, np.float32),
            "risk_probabilities": np.array(risk, np.float32), "token_importance": np.array(importance, np.float32)}


def test_aggregation_averages_distinct_views_and_keeps_each_group_its_own_share():
    effects = {g: e for g, e in zip(GROUPS, (0.8, 0.4, 0.2, 0.1))}
    fused = aggregate(outputs([0.2, 0.8], effects), 2)
    assert fused.probability == pytest.approx(0.5)  # the mean, not the first view (0.2) nor the last
    assert fused.risk_probabilities == pytest.approx([0.5, 0.125, 0.375])
    assert fused.contributions == pytest.approx({g: e / 1.5 for g, e in effects.items()})
    assert max(fused.contributions, key=fused.contributions.get) == GROUPS[0]
    assert fused.importance[:, 0].tolist() == [0.5, 1.0]  # each view's all-groups row, in view order


@dataclass
class Scored:
    features: object
    nodule_score: float = 0.9
    used: bool = True
    extra: dict = field(default_factory=dict)


def test_the_index_view_is_the_closest_to_the_capsule_not_the_first_or_the_farthest():
    views = [Scored(features(0)), Scored(features(1))]
    assert views[1].features.capsule_distance_mm < views[0].features.capsule_distance_mm
    assert choose_index_view(views, [0, 1]) == 1
    assert choose_index_view(views[::-1], [0, 1]) == 0
    assert choose_index_view(views, [0]) == 0  # only the analysable views compete


def test_the_index_view_never_compares_mm_with_pixels():
    """A calibrated view about 5 mm from the capsule (25 px at 0.2 mm) against an uncalibrated one a few
    pixels from it: mm and px are not comparable (mm against px would pick the uncalibrated view); the
    calibrated view is chosen (its sizes can be given in mm)."""
    calibrated = Scored(features(0, spacing=(0.2, 0.2)))
    uncalibrated = Scored(features(1, spacing=None))
    assert uncalibrated.features.capsule_distance_mm is None
    assert uncalibrated.features.capsule_distance_px < calibrated.features.capsule_distance_px
    assert uncalibrated.features.capsule_distance_px < calibrated.features.capsule_distance_mm  # the trap
    assert choose_index_view([uncalibrated, calibrated], [0, 1]) == 1
    both_px = [Scored(features(0, spacing=None)), Scored(features(1, spacing=None))]
    assert choose_index_view(both_px, [0, 1]) == 1  # all uncalibrated: pixels, one unit again


def test_ties_go_to_the_more_confident_detection():
    f = features(0)
    assert choose_index_view([Scored(f, 0.6), Scored(f, 0.95)], [0, 1]) == 1


class ViewEchoBackend:
    """A backend whose TMDL answers from the input rows: the all-groups probability of a view is set by its
    image's brightness (so two different views get two different answers); no other model is needed."""

    def __init__(self, repository: Path) -> None:
        self.model_repository = repository
        self.seen: list[float] = []

    def has_model(self, model: str) -> bool:
        return model == TMDL

    def model_version(self, model: str) -> str:
        return "echo"

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert model == TMDL
        n = inputs["images"].shape[0] // 5
        brightness = [float(inputs["images"][5 * k].mean()) for k in range(n)]
        self.seen = brightness
        probabilities = [0.2 if b == max(brightness) else 0.7 for b in brightness]
        return outputs(probabilities, {g: 0.1 * (j + 1) for j, g in enumerate(GROUPS)})


def test_analyse_study_reports_the_mean_of_distinct_views_and_the_closest_view(tmp_path):
    backend = ViewEchoBackend(tmp_path)
    masks = iter([FAR, NEAR])

    def segmenter(backend, img):
        @dataclass
        class Detection:
            mask: np.ndarray
            score: float = 0.9

        return Detection(next(masks)), GLAND

    result = analyse_study(study(), backend, config=CONFIG, segmenter=segmenter)
    assert len(set(backend.seen)) == 2  # TMDL saw two different views
    assert result.probability == pytest.approx(0.45, abs=1e-6)  # (0.2 + 0.7) / 2
    assert result.index_view == 1  # NEAR lies closer to the capsule
    assert result.capsule_distance_mm == pytest.approx(result.views[1].features.capsule_distance_mm)
    assert result.contributions[GROUPS[3]] > result.contributions[GROUPS[0]]  # effects 0.4 vs 0.1


def test_burned_in_calipers_reach_neither_the_segmentation_nor_the_features(tmp_path):
    @dataclass
    class Detection:
        mask: np.ndarray
        score: float = 0.9

    seen: list[np.ndarray] = []

    def segmenter(backend, img):
        seen.append(img)
        return Detection(FAR if len(seen) % 2 else NEAR), GLAND

    cross = np.zeros(SHAPE, bool)
    cross[40:51, 48] = cross[45, 43:54] = True  # a white "+" on the edge of the FAR nodule
    marked = study()
    for view in marked.views:
        view.image = view.image.copy()
        view.image[cross] = 255
    clean = analyse_study(study(), ViewEchoBackend(tmp_path), config=CONFIG, segmenter=segmenter)
    result = analyse_study(marked, ViewEchoBackend(tmp_path), config=CONFIG, segmenter=segmenter)
    assert all(img[cross].max() < 200 for img in seen)
    as_marked = extract_features(marked.views[0].image, GLAND, FAR, (0.2, 0.2), size=CONFIG.image_size)
    read = np.abs(result.views[0].features.images() - clean.views[0].features.images()).sum()
    unread = np.abs(as_marked.images() - clean.views[0].features.images()).sum()
    assert read < 0.2 * unread
    assert result.probability == pytest.approx(clean.probability)


def test_tmdl_rows_go_in_requests_of_whole_views_within_the_served_batch_limit():
    """Eight views are 40 rows, above Triton's max_batch_size of 32 for tmdl: the rows go in requests of
    whole views (6 + 2), and the concatenated answer is the one a single request gives."""
    from llnm.inference.backend import TMDL_MAX_BATCH
    from llnm.pipeline import infer_tmdl

    class RowBackend:
        def __init__(self) -> None:
            self.requests: list[int] = []

        def infer(self, model, inputs):
            rows = len(inputs["group_keep"])
            assert model == TMDL and rows <= TMDL_MAX_BATCH and rows % 5 == 0
            self.requests.append(rows)
            level = inputs["images"].reshape(rows, -1).mean(axis=1)
            return {"probability": level, "token_importance": np.repeat(level[:, None], 3, axis=1)}

    f = [features(k % len(VIEWS)) for k in range(8)]
    feed = tmdl_batch(f, study(), np.zeros((1, 150, 384), np.float32), np.ones((1, 150), np.float32))
    feed["images"] = feed["images"] * np.repeat(np.arange(1, 9, dtype=np.float32), 5)[:, None, None, None]
    backend = RowBackend()
    out = infer_tmdl(backend, feed)
    assert backend.requests == [30, 10]
    expected = feed["images"].reshape(40, -1).mean(axis=1)
    np.testing.assert_array_equal(out["probability"], expected)
    assert out["token_importance"].shape == (40, 3)
