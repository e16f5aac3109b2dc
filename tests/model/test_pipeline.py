"""analyse_study through the real ONNX Runtime backend: a tiny exported TMDL, the real text
encoder, and ground-truth masks in place of the segmentation models."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from .conftest import ellipse
from llnm.config import REPO_ROOT
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.model.config import GROUPS, preset
from llnm.model.export import export_tmdl
from llnm.model.tmdl import TMDL
from llnm.pipeline import analyse_study
from llnm.study import StudyInput, View


@dataclass
class Detection:
    mask: np.ndarray
    score: float


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> OnnxRuntimeBackend:
    repo = tmp_path_factory.mktemp("model_repository")
    torch.manual_seed(0)
    export_tmdl(TMDL(preset("tiny")), repo / "tmdl" / "1" / "model.onnx")
    shipped = REPO_ROOT / "model_repository" / "text_encoder"
    if (shipped / "1" / "model.onnx").is_file():
        (repo / "text_encoder").symlink_to(shipped)
    else:
        from llnm.text.export import export_text_encoder

        export_text_encoder(repo / "text_encoder" / "1")
    return OnnxRuntimeBackend(repo, threads=1)


SHAPE = (90, 120)
GLAND = ellipse(SHAPE, 45, 60, 35, 50)
NODULE = ellipse(SHAPE, 30, 45, 8, 10)


def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.normal(110, 15, SHAPE)
    img[GLAND] += 20
    img[NODULE] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


def segmenter(nodule, gland):
    return lambda backend, img: (None if nodule is None else Detection(nodule, 0.9), gland)


def study(**kw) -> StudyInput:
    base = dict(study_uid="1.2.3", views=[View(image(), (0.1, 0.1)), View(image(), (0.1, 0.1))],
                report_text="Solid hypoechoic nodule.\nTI-RADS 5.", age_years=40, sex="F")
    base.update(kw)
    return StudyInput(**base)


def test_a_full_result(backend):
    result = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    assert result.finding == "nodule"
    assert 0.0 < result.probability < 1.0
    assert result.risk_level in (1, 2, 3) and len(result.risk_probabilities) == 3
    assert sum(result.risk_probabilities) == pytest.approx(1.0, abs=1e-5)
    assert set(result.contributions) == set(GROUPS)
    assert sum(result.contributions.values()) == pytest.approx(1.0)
    assert result.calibrated and result.capsule_distance_mm is not None and result.capsule_distance_px > 0
    assert result.nodule_length_mm > result.nodule_width_mm > 0
    assert result.location["vertical"] in ("upper", "middle", "lower")
    assert result.index_view in (0, 1)
    for view in result.views:
        assert view.heatmap.shape == SHAPE and view.heatmap.dtype == np.float32
        assert 0.0 <= view.heatmap.min() and view.heatmap.max() <= 1.0
    assert set(result.model_versions) >= {"tmdl", "text_encoder"}
    assert result.warnings == ["the model has no out-of-distribution statistics (llnm ood-fit): "
                               "its answer is not checked against its training data"]


def test_views_are_averaged(backend):
    both = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    one = analyse_study(study(views=[View(image(), (0.1, 0.1))]), backend, config=preset("tiny"),
                        segmenter=segmenter(NODULE, GLAND))
    assert both.probability == pytest.approx(one.probability, abs=1e-5)  # two identical views


def test_no_nodule_is_a_finding_and_no_gland_is_not_assessable(backend):
    r = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(None, GLAND))
    assert r.finding == "no nodule found" and r.probability is None and r.risk_level is None
    assert r.assessable and r.not_assessable_code is None
    assert not any("not used" in w for w in r.warnings)  # a good image without nodule is not declined
    r = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(NODULE, None))
    assert r.finding == "not assessable: no thyroid gland found" and r.probability is None
    assert not r.assessable and r.not_assessable_code == "no_gland"
    assert r.not_assessable_reason == "no thyroid gland found"
    assert not any(v.used for v in r.views)


#: a nodule in the top-left corner, well outside GLAND (large enough to pass every other check)
OUTSIDE = ellipse(SHAPE, 12, 12, 11, 11)


def _no_numbers(r) -> None:
    assert r.probability is None and r.risk_level is None and r.risk_probabilities == []
    assert r.contributions == {} and r.index_view is None and r.location == {}
    assert r.capsule_distance_mm is None and r.capsule_distance_px is None
    assert r.nodule_length_mm is None and r.nodule_width_mm is None
    assert all(v.heatmap is None and v.features is None for v in r.views)


def test_a_nodule_outside_the_gland_is_not_assessable(backend):
    assert not (OUTSIDE & GLAND).any()
    r = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(OUTSIDE, GLAND))
    assert not r.assessable and r.not_assessable_code == "nodule_outside_gland"
    assert r.finding.startswith("not assessable: ") and "inside the gland" in r.finding
    assert r.not_assessable_reason in r.finding
    _no_numbers(r)
    for view in r.views:
        assert not view.used and view.quality.nodule_inside_gland == 0.0
        assert "nodule_outside_gland" in [reason.code for reason in view.quality.reasons]
    assert sum("not used" in w for w in r.warnings) == 2


def test_only_the_view_that_passes_the_gate_is_used(backend):
    masks = iter([(OUTSIDE, GLAND), (NODULE, GLAND)])  # view 1 declined, view 2 good

    def mixed(backend, img):
        nodule, gland = next(masks)
        return Detection(nodule, 0.9), gland

    r = analyse_study(study(), backend, config=preset("tiny"), segmenter=mixed)
    one = analyse_study(study(views=[View(image(), (0.1, 0.1))]), backend, config=preset("tiny"),
                        segmenter=segmenter(NODULE, GLAND))
    assert r.assessable and r.finding == "nodule"
    assert r.probability == pytest.approx(one.probability, abs=1e-5)
    assert r.risk_probabilities == pytest.approx(one.risk_probabilities, abs=1e-5)
    assert [v.used for v in r.views] == [False, True] and r.index_view == 1
    assert r.views[0].heatmap is None and r.views[1].heatmap is not None
    assert not r.views[0].quality.passed and r.views[1].quality.passed
    assert [w for w in r.warnings if "not used" in w] == [
        f"view 1 not used: {r.views[0].quality.reasons[0].text}"]


def test_a_blank_image_is_not_assessable(backend):
    blank = np.full(SHAPE, 100, np.uint8)
    for masks in ((NODULE, GLAND), (None, None)):
        r = analyse_study(study(views=[View(blank, (0.1, 0.1))]), backend, config=preset("tiny"),
                          segmenter=segmenter(*masks))
        assert not r.assessable and r.not_assessable_code == "blank_image", masks
        assert r.finding == "not assessable: blank image: no ultrasound content"
        _no_numbers(r)


def test_missing_inputs_are_neutral_with_warnings(backend):
    r = analyse_study(study(report_text=None, age_years=None, sex=None, views=[View(image(), None)]),
                      backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    assert r.probability is not None
    assert any("report" in w for w in r.warnings)
    assert any("age" in w for w in r.warnings) and any("sex" in w for w in r.warnings)
    assert any("uncalibrated" in w for w in r.warnings)
    assert not r.calibrated and r.capsule_distance_mm is None and r.capsule_distance_px > 0
    assert r.nodule_length_mm is None


def test_the_runtime_path_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, llnm.pipeline, llnm.features, llnm.text.encoder, llnm.model.config; "
            "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
