"""The out-of-distribution check: a view unlike TMDL's training data is declined with its reason,
an in-distribution one is not, and the statistics survive a round trip to disk."""

import json

import numpy as np
import pytest

from llnm import pipeline
from llnm.features import extract_features
from llnm.model.config import preset
from llnm.model.ood import (DESCRIPTOR, OOD_FILE, REFERENCE_SIZE, OodModel, area_resample, descriptor,
                            features_descriptor, fit, reference_scale, tissue_statistics)
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
    legacy = {"descriptor": list(DESCRIPTOR), "reference_size": REFERENCE_SIZE, "mean": part.mean.tolist(),
              "precision": part.precision.tolist(), "threshold": part.threshold, "quantile": 0.96, "source": "v1"}
    (tmp_path / "v1.json").write_text(json.dumps(legacy))
    assert OodModel.load(tmp_path / "v1.json").score(v) == pytest.approx(single.score(v))


def test_statistics_fitted_on_another_pixel_grid_are_refused(tmp_path):
    """A file fitted before the tissue statistics were measured at the reference size (or at another one)
    has the same descriptor names but other numbers behind them: refused, not misread."""
    rng = np.random.default_rng(4)
    fit(rng.normal(size=(60, len(DESCRIPTOR))), rng.normal(size=(30, len(DESCRIPTOR)))).save(tmp_path / "ood.json")
    raw = json.loads((tmp_path / "ood.json").read_text())
    unrecorded = {k: v for k, v in raw.items() if k != "reference_size"}
    for stale in (unrecorded, {**raw, "reference_size": 2 * REFERENCE_SIZE}):
        (tmp_path / "stale.json").write_text(json.dumps(stale))
        with pytest.raises(ValueError, match="refit with llnm ood-fit"):
            OodModel.load(tmp_path / "stale.json")


def test_area_resample_averages_what_each_coarser_pixel_covers():
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, (60, 90))
    halved = area_resample(x, 0.5)
    assert halved.shape == (30, 45)
    assert np.allclose(halved, x.reshape(30, 2, 45, 2).mean(axis=(1, 3)))
    odd = area_resample(x, 0.37)
    assert odd.shape == (22, 33) and odd.mean() == pytest.approx(x.mean(), rel=1e-9)
    assert np.array_equal(area_resample(x, 1.0), x)


def test_only_views_larger_than_the_reference_size_are_reduced():
    assert reference_scale((REFERENCE_SIZE // 2, REFERENCE_SIZE)) == 1.0
    assert reference_scale((300, 200)) == 1.0
    assert reference_scale((2 * REFERENCE_SIZE, REFERENCE_SIZE)) == pytest.approx(0.5)


def _tissue(scale: float) -> list[float]:
    """tissue_statistics of one correlated speckle field (300 x 400: the reference size) resized by
    `scale` as a device with another matrix would record it."""
    from PIL import Image
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(6).normal(size=(300, 400)), 0.8)
    img = np.clip(110 + field / field.std() * 25, 0, 255).astype(np.uint8)
    gland = np.zeros(img.shape, np.uint8)
    gland[80:220, 60:340] = 1
    if scale != 1.0:
        size = (round(400 * scale), round(300 * scale))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
        gland = np.asarray(Image.fromarray(gland).resize(size, Image.Resampling.NEAREST))
    return tissue_statistics(img, gland.astype(bool))


def test_speckle_correlation_reads_alike_on_a_larger_matrix(monkeypatch):
    """The same tissue at 1.5, 2 and 3 x the pixels has the same speckle correlation at the reference
    size, near the original's; measured in the view's own pixels, x 2 moves it far (select frames
    resized x 2 were declined as unlike the training data in a third of the views)."""
    lags = [DESCRIPTOR.index(n) - DESCRIPTOR.index("tissue_skew") for n in
            ("tissue_lag1_rows", "tissue_lag1_cols", "tissue_lag3_rows", "tissue_lag3_cols")]
    native = np.array(_tissue(1.0))[lags]
    larger = [np.array(_tissue(s))[lags] for s in (1.5, 2.0, 3.0)]
    assert all(np.abs(v - larger[1]).max() < 0.02 for v in larger)
    assert np.abs(larger[1] - native).max() < 0.1
    monkeypatch.setattr("llnm.model.ood.REFERENCE_SIZE", 10 ** 6)
    assert np.abs(np.array(_tissue(2.0))[lags] - native).max() > 0.2


def test_a_training_view_reduced_as_a_smaller_matrix_keeps_its_tissue_in_mm():
    """`llnm ood-fit` also fits each training view as a device with a smaller matrix would send it: the
    same anatomy over fewer, coarser pixels (the masks' areas in mm2 kept, the calibration scaled)."""
    from llnm.cli.ood_fit import reduced

    img = speckle(7)
    image, gland, nodule, spacing = reduced(img, GLAND, NODULE, (0.1, 0.1), 0.8)
    assert image.shape == (round(SHAPE[0] * 0.8), round(SHAPE[1] * 0.8)) and image.dtype == np.uint8
    assert spacing == pytest.approx((0.125, 0.125))
    for before, after in ((GLAND, gland), (NODULE, nodule)):
        assert after.sum() * spacing[0] * spacing[1] == pytest.approx(before.sum() * 0.01, rel=0.05)
    assert reduced(img, GLAND, NODULE, None, 0.8)[3] is None


def test_a_blended_edge_of_a_resized_frame_does_not_read_as_speckle(monkeypatch):
    """A gland reaching the image's edge: on a frame resized down, the edge column is a blend of image
    and the dark background around it. The tissue statistics leave the view's border out, so that
    column changes nothing; read with it, the speckle correlation along rows drops."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(8).normal(size=(240, 320)), 0.8)
    img = np.clip(110 + field / field.std() * 25, 0, 255).astype(np.uint8)
    gland = np.zeros(img.shape, bool)
    gland[60:180, :200] = True
    blended = img.copy()
    blended[:, 0] //= 3
    assert tissue_statistics(blended, gland) == pytest.approx(tissue_statistics(img, gland))
    monkeypatch.setattr("llnm.model.ood.EDGE", 0)
    with_edge = np.array(tissue_statistics(blended, gland)) - np.array(tissue_statistics(img, gland))
    assert np.abs(with_edge).max() > 0.02


def test_each_view_is_scored_by_a_fit_without_its_case():
    """Cross-fitted calibration: a case unlike the others lies far from a fit that never saw it, while a
    fit that includes it (in-sample) calls it close; every view gets a distance from the fit of the
    other folds."""
    from llnm.model.ood import cross_fitted_distances, gaussian

    rng = np.random.default_rng(9)
    groups = np.repeat([f"case{i}" for i in range(20)], 15)
    train = rng.normal(size=(len(groups), 4))
    train[groups == "case3"] += 4.0
    crossed = cross_fitted_distances(train, groups, train, groups, folds=5)
    in_sample = gaussian("all", train)
    odd = groups == "case3"
    assert crossed.shape == (len(train),) and np.isfinite(crossed).all()
    assert crossed[odd].mean() > 1.5 * np.mean([in_sample.distance(v) for v in train[odd]])
    assert np.median(crossed[~odd]) == pytest.approx(np.median([in_sample.distance(v) for v in train[~odd]]),
                                                     rel=0.15)
    with pytest.raises(ValueError, match="groups"):
        cross_fitted_distances(train[:30], groups[:30], train[:30], groups[:30], folds=5)


def test_the_threshold_pools_held_out_and_cross_fitted_distances():
    from llnm.model.ood import fit_component

    rng = np.random.default_rng(10)
    train, held = rng.normal(size=(200, 3)), rng.normal(size=(40, 3))
    alone = fit_component("x", train, held, 0.96)
    far = np.full(400, 9.0)
    pooled = fit_component("x", train, held, 0.96, cross_fitted=far)
    assert pooled.threshold == pytest.approx(9.0) and alone.threshold < 4.0
    assert np.array_equal(pooled.precision, alone.precision)



def test_ood_fit_groups_views_by_patient_case_else_by_study(tmp_path):
    """Cross-fitting must hold out every view of a patient together (`llnm real-studies` makes several
    studies of one case's frames); a phantom study is its own patient."""
    from llnm.cli.ood_fit import study_cases

    (tmp_path / "labels.csv").write_text("study_uid,llnm,report,case\n1.1,0,a,17\n1.2,1,b,17\n1.3,0,c,\n")
    assert study_cases(tmp_path) == {"1.1": "17", "1.2": "17", "1.3": "1.3"}
    (tmp_path / "labels.csv").write_text("study_uid,llnm,report\n2.1,0,a\n")
    assert study_cases(tmp_path) == {"2.1": "2.1"}
