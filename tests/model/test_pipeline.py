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
    assert result.warnings == []


def test_views_are_averaged(backend):
    both = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(NODULE, GLAND))
    one = analyse_study(study(views=[View(image(), (0.1, 0.1))]), backend, config=preset("tiny"),
                        segmenter=segmenter(NODULE, GLAND))
    assert both.probability == pytest.approx(one.probability, abs=1e-5)  # two identical views


def test_no_nodule_and_no_gland_are_findings(backend):
    r = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(None, GLAND))
    assert r.finding == "no nodule found" and r.probability is None and r.risk_level is None
    r = analyse_study(study(), backend, config=preset("tiny"), segmenter=segmenter(NODULE, None))
    assert r.finding == "no gland found" and r.probability is None


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
