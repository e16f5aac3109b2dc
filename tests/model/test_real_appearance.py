"""The shipped TMDL trained on real appearance and its out-of-distribution check (issue 14), through
`llnm predict`'s path with the shipped models: in-distribution studies are answered, studies unlike
anything it was trained on are declined with the reason.

The phantom (a training source) needs nothing outside the repository. Real frames are not part of the
repository: the tests that need them read LLNM_REAL_FRAMES (default ../shared/data/ddti_frames, the
DDTI whole frames) and are skipped where they are absent; they use only cases of the `val` split, on
which neither TMDL nor its OOD check was trained, calibrated or chosen."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from llnm.config import REPO_ROOT, Settings
from llnm.dicom.loading import group_by_study
from llnm.model.ood import load_for_repository
from llnm.predict import predict_study

pytestmark = pytest.mark.slow

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
REAL_FRAMES = Path(os.environ.get("LLNM_REAL_FRAMES", REPO_ROOT.parent / "shared" / "data" / "ddti_frames"))
OOD_TEXT = "input unlike the training data of this model"


def mr_like(pixels: np.ndarray) -> np.ndarray:
    """A (rows, columns) image as another modality would show the same anatomy: smoothed (sigma 4 px, no
    speckle left) with light Gaussian noise; brightness and shapes kept (bench/ood_abstention.py)."""
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(pixels.astype(np.float64), 4.0)
    return np.clip(smooth + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def rewrite(files: list[Path], out: Path, alter=None) -> list[Path]:
    """The study under new UIDs, its ultrasound images altered by `alter` and stored uncompressed."""
    study_uid, written, series = generate_uid(), [], {}
    out.mkdir(parents=True)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if alter is not None and ds.Modality == "US":
            ds.PixelData = alter(ds.pixel_array).tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        written.append(out / path.name)
        ds.save_as(written[-1], enforce_file_format=True)
    return written


def real_frame_studies(out: Path, count: int | None = None) -> list[list[Path]]:
    """Frames of held-out (`val`) cases as a modality would send them (whole frame, scanner interface
    around it, no regions), one single-image study each; at most one frame per case when `count`."""
    from PIL import Image

    from llnm.segmentation.data import case_split, ddti_case
    from tests.dicom.conftest import make_us

    if not (REAL_FRAMES / "image").is_dir():
        pytest.skip(f"real frames not at hand ({REAL_FRAMES}; set LLNM_REAL_FRAMES)")
    studies, cases = [], set()
    for jpg in sorted((REAL_FRAMES / "image").glob("*.jpg")):
        if case_split(jpg.name) != "val" or (count is not None and ddti_case(jpg.name) in cases):
            continue
        cases.add(ddti_case(jpg.name))
        grey = np.asarray(Image.open(jpg).convert("L"))
        path = out / f"{jpg.stem}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_us(path, pixel=grey, rows=grey.shape[0], cols=grey.shape[1])
        studies.append([path])
        if count is not None and len(studies) == count:
            break
    return studies


@pytest.fixture(scope="module")
def backend():
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend

    for name in ("nodule_seg", "thyroid_seg", "tmdl", "text_encoder"):
        if not (MODEL_REPOSITORY / name / "1" / "model.onnx").is_file():
            pytest.skip(f"shipped model {name} absent (make setup exports the text encoder)")
    return OnnxRuntimeBackend(MODEL_REPOSITORY, threads=1)


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> list[Path]:
    from llnm.phantom.layout import write_phantom_set

    out = write_phantom_set(tmp_path_factory.mktemp("phantom"), studies=1, seed=7)  # as `llnm phantom` writes it
    return sorted(out.rglob("*.dcm"))


def predict(files: list[Path], backend) -> dict:
    groups, _ = group_by_study(files)
    (group,) = groups.values()
    return predict_study(group, backend, Settings.from_env(environ={}, key_images=True))


def test_the_shipped_check_knows_both_training_sources():
    ood = load_for_repository(MODEL_REPOSITORY)
    assert ood is not None, "model_repository/tmdl/1/ood.json is missing: llnm ood-fit"
    assert [c.name for c in ood.components] == ["phantom", "real_frames"]
    assert ood.quantile >= 0.95 and all(c.threshold > 0 for c in ood.components)


def test_a_phantom_study_is_answered_and_its_mr_like_copy_declined_with_the_reason(backend, phantom_study,
                                                                                  tmp_path):
    answered = predict(rewrite(phantom_study, tmp_path / "in"), backend).summary
    assert answered["assessable"] and answered["probability"] is not None, answered["finding"]

    output = predict(rewrite(phantom_study, tmp_path / "mr-like", mr_like), backend)
    summary = output.summary
    assert summary["assessable"] is False and summary["not_assessable"]["code"] == "out_of_distribution"
    assert OOD_TEXT in summary["finding"] and summary["probability"] is None and summary["contributions"] == {}
    assert not [ds for ds in output.datasets if ds.Modality == "SEG"]


def test_held_out_real_frames_are_answered_and_their_mr_like_copies_declined(backend, tmp_path):
    """Real appearance is in distribution now: of the held-out frames the gate lets through, only a
    few are declined as unlike the training data, and a probability is given for the rest. The check's
    target is <= 5 % and it is not met (the model card): 6 of 68 with nodule stage 5, 8 of 72 with
    stage 8, whose gate passes more frames, 4 of 72 since the threshold is calibrated on every case. The bound, 15 %, catches what this test exists for: real
    frames declined wholesale (100 % with the phantom-only model). The same frames shown as another
    modality would show them are declined (target >= 95 %)."""
    studies = real_frame_studies(tmp_path / "real")
    ood, passed, altered_ood, altered_passed = 0, 0, 0, 0
    for i, files in enumerate(studies):
        summary = predict(files, backend).summary
        code = (summary.get("not_assessable") or {}).get("code")
        if summary["probability"] is not None or code == "out_of_distribution":  # reached the check
            passed += 1
            ood += code == "out_of_distribution"
            assert (summary["probability"] is None) == (code == "out_of_distribution")
        altered = predict(rewrite(files, tmp_path / f"mr-like-{i}", mr_like), backend).summary
        code = (altered.get("not_assessable") or {}).get("code")
        if altered["probability"] is not None or code == "out_of_distribution":
            altered_passed += 1
            altered_ood += code == "out_of_distribution"
    assert passed >= 0.5 * len(studies), (passed, len(studies))
    assert ood <= 0.15 * passed, (ood, passed)
    assert altered_passed and altered_ood >= 0.9 * altered_passed, (altered_ood, altered_passed)
