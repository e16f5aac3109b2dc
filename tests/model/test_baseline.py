"""The logistic-regression baseline beside TMDL (issue 15): report fields parsed from real report wording,
geometry from the masks, a fit that learns what its inputs carry (and its ablations what only theirs
carry), and the paired bootstrap of the AUC difference."""

from __future__ import annotations

import numpy as np
import pytest

from llnm.model.baseline import cross_fitted, fit, paired_bootstrap, report_fields
from llnm.model.data import read_layout
from llnm.model.metrics import auc

from .conftest import write_layout


def test_report_fields_read_radiology_wording():
    text = ("Within the upper right lobe there is a solid, markedly hypoechoic nodule measuring 16 x 14 mm "
            "(taller-than-wide). Margins are irregular. Punctate echogenic foci. Suspicious level VI node.\n"
            "ACR TI-RADS 5 (highly suspicious).")
    f = report_fields(text)
    assert f["echo_marked_hypo"] == f["margin_irregular"] == f["calc_micro"] == f["taller_than_wide"] == 1.0
    assert f["central_node"] == 1.0 and f["tirads"] == 5.0 and f["report_present"] == 1.0
    assert f["margin_smooth"] == f["calc_macro"] == f["extrathyroidal"] == 0.0
    smooth = report_fields("Well-circumscribed isoechoic nodule with coarse calcification. TI-RADS 3.")
    assert smooth["margin_smooth"] == smooth["calc_macro"] == 1.0 and smooth["tirads"] == 3.0
    assert report_fields(None) == report_fields("") and report_fields(None)["report_present"] == 0.0


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    return read_layout(write_layout(root / "train", 80, seed=3)), read_layout(write_layout(root / "test", 60, seed=4))


def test_the_baseline_learns_what_its_inputs_carry_and_each_ablation_only_its_own(layouts):
    train, test = layouts
    y = np.array([s.llnm for s in test])
    full = auc(fit(train).predict(test), y)
    image_only = auc(fit(train, inputs=("image",)).predict(test), y)
    report_only = auc(fit(train, inputs=("report",)).predict(test), y)
    demographics_only = auc(fit(train, inputs=("demographics",)).predict(test), y)
    # the layout: the label follows the capsule distance (image), the report says "irregular" for 70 % of
    # positives; demographics carry nothing
    assert full > 0.8 and image_only > 0.7 and report_only > 0.6
    assert full >= max(image_only, report_only) - 0.02
    assert demographics_only < 0.7


def test_one_comparison_reads_each_study_geometry_once_and_scores_the_same(layouts, monkeypatch):
    """The fits of one comparison share a memo: the geometry (every image and mask read) is computed once
    per study, and the scores are those of fits without it."""
    from llnm.model import baseline

    train, test = layouts
    expected = [fit(train, inputs=inputs).predict(test) for inputs in (("report", "image", "demographics"), ("image",))]
    calls = []
    geometry = baseline.SOURCES["image"]
    monkeypatch.setitem(baseline.SOURCES, "image", lambda study: calls.append(study.study_uid) or geometry(study))
    memo: baseline.Memo = {}
    got = [fit(train, inputs=inputs, memo=memo).predict(test, memo)
           for inputs in (("report", "image", "demographics"), ("image",))]
    assert all(np.array_equal(e, g) for e, g in zip(expected, got))
    assert sorted(calls) == sorted(s.study_uid for s in train + test)


def test_measuring_in_several_processes_fills_the_same_memo_and_gives_the_same_comparison(layouts):
    """`workers` only spreads the mask measurements: every (study, source) value is the one measured in
    this process, and the comparison's figures are identical."""
    from llnm.model import baseline

    train, test = layouts
    one: baseline.Memo = {}
    baseline.design(train + test, baseline.DEFAULT_INPUTS + ("pixels",), one)
    spread: baseline.Memo = {}
    baseline.prefill(train + test, baseline.DEFAULT_INPUTS + ("pixels",), spread, workers=2)
    assert {k for k in one if k[1] in baseline.MEASURED_SOURCES} == set(spread)
    assert all(spread[k] == one[k] for k in spread)


def test_the_comparison_is_the_same_with_its_measurements_in_several_processes(tmp_path):
    train, test = write_layout(tmp_path / "train", 40, seed=3), write_layout(tmp_path / "test", 30, seed=4)
    studies = read_layout(test)
    uids, y = [s.study_uid for s in studies], np.array([s.llnm for s in studies])
    p = np.linspace(0.0, 1.0, len(y))
    from llnm.model.baseline import compare

    assert compare(train, test, uids, p, y, n=50) == compare(train, test, uids, p, y, n=50, workers=2)


def test_paired_bootstrap_of_the_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    perfect = y + rng.normal(0, 0.1, 300)
    noise = rng.random(300)
    better = paired_bootstrap(perfect, noise, y, n=300)
    assert better["difference"] > 0.3 and better["ci_low"] > 0.3 and better["ci_low"] <= better["difference"] <= better["ci_high"]
    same = paired_bootstrap(noise, noise, y, n=100)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    worse = paired_bootstrap(noise, perfect, y, n=300)
    assert worse["ci_high"] < 0


def test_the_pixel_reader_is_a_separate_source_never_in_the_default_baseline(layouts):
    """`pixels` (heterogeneity, foci, outline irregularity measured on the masks) makes the regression a
    hand-made pixel reader for benchmarks; the baseline beside TMDL keeps report + geometry + demographics."""
    from llnm.model import baseline

    train, test = layouts
    default = fit(train)
    assert not any(n.startswith("pixels.") for n in default.names)
    reader = fit(train, inputs=baseline.DEFAULT_INPUTS + ("pixels",))
    assert {f"pixels.{k}" for k in baseline.PIXEL_MEASURES} <= set(reader.names)
    assert reader.predict(test).shape == (len(test),)
    assert baseline.pixels(test[0])["measured"] == 1.0


def test_cross_fitted_estimates_never_come_from_a_fit_on_the_study_itself(layouts):
    """The soft targets of `llnm train --distill`. On labels shuffled at random an in-sample fit still
    ranks its own studies (it has learned their labels); the cross-fitted estimates do not (five
    shuffles, averaged); on the real labels they rank as a held-out fit does."""
    import dataclasses

    train, _ = layouts
    y = np.array([s.llnm for s in train])
    assert auc(cross_fitted(train), y) > 0.85
    in_sample, cross = [], []
    for k in range(5):
        shuffled = np.random.default_rng(k).permutation(y)
        noise = [dataclasses.replace(s, llnm=int(v)) for s, v in zip(train, shuffled)]
        in_sample.append(auc(fit(noise).predict(noise), shuffled))
        cross.append(auc(cross_fitted(noise, seed=k), shuffled))
    assert np.mean(in_sample) > 0.62 and np.mean(cross) < 0.58


def test_cross_fitting_a_small_cohort_uses_fewer_folds_and_refuses_one_without_both_labels(layouts):
    import dataclasses

    train, _ = layouts
    positives = [s for s in train if s.llnm == 1][:3]
    small = positives + [s for s in train if s.llnm == 0][:20]
    estimates = cross_fitted(small)  # three positives: three folds, each scoring one
    assert estimates.shape == (23,) and np.isfinite(estimates).all()
    one_positive = [dataclasses.replace(s, llnm=0) for s in small[1:]] + small[:1]
    with pytest.raises(ValueError, match="two studies with and two without"):
        cross_fitted(one_positive)
