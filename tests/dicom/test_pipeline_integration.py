"""The real pipeline (llnm.pipeline.analyse_study through ONNX Runtime) between the DICOM reader and
writers, on phantom studies: the shipped TMDL (else a tiny one exported here), the shipped text
encoder, and the phantom's true masks in place of the segmentation models (not needed here)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from llnm.config import REPO_ROOT
from llnm.dicom import codes
from llnm.predict import predict_paths, write_output
from tests.dicom.conftest import dciodvfy_errors

pytestmark = pytest.mark.slow


@dataclass
class Detection:
    mask: np.ndarray
    score: float


@pytest.fixture(scope="module")
def backend_and_config(tmp_path_factory):
    """(backend, TMDL preset): the shipped models when there, else a tiny TMDL exported here."""
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.model.config import preset

    shipped = REPO_ROOT / "model_repository"
    if not (shipped / "text_encoder" / "1" / "model.onnx").is_file():
        pytest.skip("text encoder not exported into model_repository/")
    if (shipped / "tmdl" / "1" / "model.onnx").is_file():
        return OnnxRuntimeBackend(shipped, threads=1), None  # None: the Settings preset it was built with
    torch = pytest.importorskip("torch", reason="exporting the tiny TMDL needs the train extra")
    from llnm.model.export import export_tmdl
    from llnm.model.tmdl import TMDL

    repo = tmp_path_factory.mktemp("model_repository")
    torch.manual_seed(0)
    export_tmdl(TMDL(preset("tiny")), repo / "tmdl" / "1" / "model.onnx")
    (repo / "text_encoder").symlink_to(shipped / "text_encoder")
    return OnnxRuntimeBackend(repo, threads=1), preset("tiny")


def truth_segmenter(root: Path):
    """The phantom's true masks, found by the view's pixels (the reader's crop is the truth image)."""
    from PIL import Image

    by_pixels = {}
    for png in (root / "truth" / "images").glob("*.png"):
        uid = png.stem
        image = np.asarray(Image.open(png))
        nodule = np.asarray(Image.open(root / "truth" / "masks" / f"{uid}_nodule.png")) > 0
        gland = np.asarray(Image.open(root / "truth" / "masks" / f"{uid}_gland.png")) > 0
        by_pixels[image.tobytes()] = (nodule, gland)

    def segment(backend, image):
        nodule, gland = by_pixels[image.tobytes()]
        return Detection(nodule, 0.95), gland

    return segment


def test_phantom_through_the_real_pipeline(backend_and_config, tmp_path, settings):
    from llnm.cli import main
    from llnm.pipeline import analyse_study

    backend, config = backend_and_config
    root = tmp_path / "ph"
    # the phantom's own frame size: TMDL abstains on views unlike its training data (llnm.model.ood), and
    # the speckle of a frame resampled to another size is such a view
    assert main(["phantom", "--out", str(root), "--studies", "1", "--seed", "5"]) == 0
    analyse = functools.partial(analyse_study, config=config, segmenter=truth_segmenter(root))
    (output,) = predict_paths([root], backend, settings, analyse=analyse)
    summary = output.summary
    assert summary["status"] == "ok" and summary["finding"] == "nodule" and summary["calibrated"] is True
    assert 0.0 <= summary["probability"] <= 1.0 and summary["risk_level"] in (1, 2, 3)
    assert summary["risk_label"] == ("low", "medium", "high")[summary["risk_level"] - 1]
    assert summary["capsule_distance_mm"] is not None and summary["nodule_size_mm"]["length"] > 0
    assert set(summary["contributions"]) == {"location", "morphology", "report", "demographics"}
    assert summary["algorithm"]["models"].keys() >= {"tmdl", "text_encoder"}
    folder = write_output(output, tmp_path / "out")
    assert json.loads((folder / "summary.json").read_text()) == summary
    for obj in summary["objects"]:
        assert dciodvfy_errors(folder / obj["file"]) == [], obj["type"]
    (sr_obj,) = [o for o in summary["objects"] if o["type"] == "SR"]
    sr = hd.sr.srread(folder / sr_obj["file"])
    index_group = next(g for g in sr.content.get_planar_roi_measurement_groups() if g.get_measurements())
    values = {m.name.meaning: m.value for m in index_group.get_measurements()}
    assert values[codes.LLNM_PROBABILITY.meaning] / 100 == pytest.approx(summary["probability"], abs=1e-9)
    assert values[codes.CAPSULE_DISTANCE.meaning] == pytest.approx(summary["capsule_distance_mm"])
    assert values["Long axis"] == pytest.approx(summary["nodule_size_mm"]["length"])
    assert values["Short axis"] == pytest.approx(summary["nodule_size_mm"]["width"])
