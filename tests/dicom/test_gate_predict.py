"""The quality gate through `llnm predict`'s path (read DICOM -> shipped models -> gate -> outputs):
frames the product must decline are declined with their reason, never answered with a number."""

from __future__ import annotations

import numpy as np
import pytest

from llnm.config import REPO_ROOT, Settings
from llnm.dicom.loading import group_by_study
from llnm.predict import predict_study
from tests.dicom.conftest import make_us, real_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend():
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend

    shipped = REPO_ROOT / "model_repository"
    for name in ("nodule_seg", "thyroid_seg", "tmdl", "text_encoder"):
        if not (shipped / name / "1" / "model.onnx").is_file():
            pytest.skip(f"shipped model {name} absent (make setup exports the text encoder)")
    return OnnxRuntimeBackend(shipped, threads=1)


def predict(paths, backend):
    groups, _ = group_by_study(paths)
    (files,) = groups.values()
    return predict_study(files, backend, Settings.from_env(key_images=True))


def assert_declined(summary: dict, codes: set[str]) -> None:
    assert summary["assessable"] is False
    assert summary["not_assessable"]["code"] in codes, summary["not_assessable"]
    for key in ("probability", "risk_level", "risk_label", "capsule_distance_mm", "capsule_distance_px",
                "nodule_size_mm"):
        assert summary[key] in (None, {}, []), key
    assert summary["contributions"] == {}


@pytest.mark.parametrize("fill", [0, 90])
def test_a_blank_frame_is_declined_as_blank(tmp_path, backend, fill):
    path = tmp_path / "blank.dcm"
    make_us(path, pixel=np.full((300, 400), fill, dtype=np.uint8))
    output = predict([path], backend)
    assert_declined(output.summary, {"blank_image"})
    assert "blank image" in output.summary["finding"]
    assert not [d for d in output.datasets if d.Modality == "SEG"]


def test_a_doppler_only_study_is_declined_before_any_model(tmp_path, backend):
    path = tmp_path / "doppler.dcm"
    make_us(path, rows=200, cols=300, regions=[{"x0": 0, "y0": 0, "x1": 299, "y1": 199, "type": 2}])
    output = predict([path], backend)
    assert output.result is None  # no model ran; the notice SR and key image say so (test_notice_objects.py)
    assert sorted(d.Modality for d in output.datasets) == ["SR", "US"]  # the key image is Modality US
    assert_declined(output.summary, {"no_image"})
    assert any("Doppler" in w for w in output.summary["warnings"])


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm", "examples_ybr_color.dcm"])
def test_a_real_frame_without_a_thyroid_is_not_answered(backend, name):
    """Real ultrasound of other organs (obstetric, abdominal, cardiac): no thyroid, so no number."""
    output = predict([real_file(name)], backend)
    summary = output.summary
    assert summary["probability"] is None and summary["risk_level"] is None, summary["finding"]
    assert summary["assessable"] is False or summary["finding"] == "no nodule found"
