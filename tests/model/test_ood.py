"""The out-of-distribution check: a view unlike TMDL's training data is declined with its reason,
an in-distribution one is not, and the statistics survive a round trip to disk."""

import json

import numpy as np
import pytest

from llnm import pipeline
from llnm.features import extract_features
from llnm.model.config import preset
from llnm.model.ood import DESCRIPTOR, OOD_FILE, OodModel, descriptor, features_descriptor, fit
from llnm.pipeline import analyse_study
from llnm.study import View

from .test_pipeline import GLAND, NODULE, SHAPE, backend, segmenter, study  # noqa: F401  (fixture)


def speckle(seed: int, mean: float = 110, grain: int = 1) -> np.ndarray:
    """The test pipeline's kind of view: speckle, a brighter gland, a dark nodule."""
    rng = np.random.default_rng(seed)
    img = rng.normal(mean, 15, (SHAPE[0] // grain + 1, SHAPE[1] // grain + 1))
    img = np.kron(img, np.ones((grain, grain)))[:SHAPE[0], :SHAPE[1]]
    img[GLAND] += 20
    img[NODULE] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


def view_descriptor(img: np.ndarray) -> np.ndarray:
    feats = extract_features(img, GLAND, NODULE, (0.1, 0.1), size=preset("tiny").image_size)
    return features_descriptor(feats, img, GLAND)


@pytest.fixture(scope="module")
def ood(backend):  # noqa: F811
    train = np.array([view_descriptor(speckle(s, mean=100 + s % 20)) for s in range(150)])
    calibration = np.array([view_descriptor(speckle(s, mean=100 + s % 20)) for s in range(200, 300)])
    model = fit(train, calibration, quantile=0.99, source="test")
    model.save(backend.model_repository / "tmdl" / "1" / OOD_FILE)
    pipeline._ood_model.cache_clear()
    yield model
    (backend.model_repository / "tmdl" / "1" / OOD_FILE).unlink()
    pipeline._ood_model.cache_clear()


def test_threshold_lets_the_chosen_share_of_held_out_views_pass():
    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(400, 5)), rng.normal(size=(1000, 5))
    model = fit(train, held_out, quantile=0.95)
    passed = np.mean([not model.is_out(v) for v in held_out])
    assert passed == pytest.approx(0.95, abs=0.002)
    assert model.is_out(np.full(5, 6.0))


def test_round_trip_and_a_foreign_descriptor_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    model = fit(rng.normal(size=(50, len(DESCRIPTOR))), rng.normal(size=(20, len(DESCRIPTOR))), source="x")
    model.save(tmp_path / "ood.json")
    again = OodModel.load(tmp_path / "ood.json")
    v = rng.normal(size=len(DESCRIPTOR))
    assert again.score(v) == pytest.approx(model.score(v)) and again.threshold == model.threshold
    raw = json.loads((tmp_path / "ood.json").read_text())
    raw["descriptor"] = raw["descriptor"][:-1]
    (tmp_path / "ood.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="descriptor"):
        OodModel.load(tmp_path / "ood.json")


def test_descriptor_sees_speckle_grain_and_brightness():
    fine, coarse = speckle(0), speckle(0, grain=4)
    d_fine = descriptor(fine / 255, fine / 255, 0, 1, fine, GLAND)
    d_coarse = descriptor(coarse / 255, coarse / 255, 0, 1, coarse, GLAND)
    assert d_fine[3] < d_coarse[3]
    assert d_fine[DESCRIPTOR.index("tissue_lag1_rows")] < d_coarse[DESCRIPTOR.index("tissue_lag1_rows")]
    assert descriptor(fine / 255 * 0.5, fine / 255, 0, 1, fine, GLAND)[0] < d_fine[0]


def test_an_unlike_study_is_declined_with_the_reason_and_a_like_one_is_not(backend, ood):  # noqa: F811
    like = study(views=[View(speckle(500), (0.1, 0.1)), View(speckle(501), (0.1, 0.1))])
    result = analyse_study(like, backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    assert result.assessable and result.probability is not None
    assert all(v.ood_score is not None and v.ood_score <= ood.threshold for v in result.views)

    unlike = study(views=[View(speckle(600, grain=5, mean=200), (0.1, 0.1))])
    result = analyse_study(unlike, backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    assert not result.assessable and result.not_assessable_code == "out_of_distribution"
    assert result.probability is None and result.risk_level is None and result.contributions == {}
    assert "unlike the training data" in result.finding
    assert all(v.heatmap is None for v in result.views)


def test_only_the_unlike_view_of_a_study_is_dropped(backend, ood):  # noqa: F811
    mixed = study(views=[View(speckle(700), (0.1, 0.1)), View(speckle(701, grain=5, mean=200), (0.1, 0.1))])
    result = analyse_study(mixed, backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    single = analyse_study(study(views=[View(speckle(700), (0.1, 0.1))]), backend, config=preset("tiny"),
                           segmenter=segmenter(NODULE, GLAND))
    assert result.assessable and result.views[1].used is False and result.views[0].used is True
    assert result.probability == pytest.approx(single.probability, abs=1e-6)
    assert any("view 2 not used" in w for w in result.warnings)


def test_each_training_source_keeps_its_share_and_what_lies_between_or_beyond_is_out():
    """Two sources far apart (the phantom, real frames): one Gaussian each, so held-out views of either
    pass at the chosen rate, while a view like neither (between them, or far off) is out."""
    from llnm.model.ood import fit_sources

    rng = np.random.default_rng(2)
    a, b = np.zeros(5), np.full(5, 12.0)
    sources = {name: (centre + rng.normal(size=(300, 5)), centre + rng.normal(size=(2000, 5)))
               for name, centre in (("phantom", a), ("real_frames", b))}
    model = fit_sources(sources, quantile=0.96)
    for name, (_, held_out) in sources.items():
        passed = np.mean([not model.is_out(v) for v in held_out])
        assert passed == pytest.approx(0.96, abs=0.01), name
    assert model.is_out((a + b) / 2) and model.is_out(np.full(5, -10.0))
    near_real = b + 0.1
    assert min(model.distances(near_real), key=model.distances(near_real).get) == "real_frames"
    assert model.score(near_real) == pytest.approx(model.distances(near_real)["real_frames"])


def test_sources_survive_a_round_trip_and_a_single_source_file_still_loads(tmp_path):
    from llnm.model.ood import fit_sources

    rng = np.random.default_rng(3)
    n = len(DESCRIPTOR)
    model = fit_sources({"phantom": (rng.normal(size=(60, n)), rng.normal(size=(30, n))),
                         "real_frames": (5 + rng.normal(size=(60, n)), 5 + rng.normal(size=(30, n)))})
    model.save(tmp_path / "ood.json")
    again = OodModel.load(tmp_path / "ood.json")
    assert [c.name for c in again.components] == ["phantom", "real_frames"]
    v = 5 + rng.normal(size=n)
    assert again.score(v) == pytest.approx(model.score(v)) and again.threshold == 1.0
    single = fit(rng.normal(size=(60, n)), rng.normal(size=(30, n)))
    (part,) = single.components
    legacy = {"descriptor": list(DESCRIPTOR), "mean": part.mean.tolist(), "precision": part.precision.tolist(),
              "threshold": part.threshold, "quantile": 0.96, "source": "v1"}
    (tmp_path / "v1.json").write_text(json.dumps(legacy))
    assert OodModel.load(tmp_path / "v1.json").score(v) == pytest.approx(single.score(v))
