"""Out of its depth the shipped TMDL declines, and the decision does not depend on the path a study takes:
`llnm predict` (in-process ONNX Runtime), the worker on ONNX Runtime and the worker on the real
tritonserver (Python-backend copies of model_repository/ made by triton_harness) give the same answer for
- an in-distribution phantom study (what the e2e tests send): a probability;
- the same study shown as another modality would show it (smoothed, light noise, no speckle): declined, "not assessable by this
  model: input unlike the training data", in summary.json and in the SR, without probability or shares;
- where the real frames are at hand (LLNM_REAL_FRAMES, default ../shared/data/ddti_frames; they are not
  part of the repository), real frames of held-out (`val`) cases as a modality sends them: what TMDL
  trained on real appearance answers for."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from triton_harness import TritonServer, need_triton

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import REPO_ROOT, Settings
from llnm.dicom.loading import group_by_study
from llnm.inference import provenance
from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.inference.triton_backend import TritonBackend
from llnm.storage.spool import Spool
from llnm.predict import predict_study
from llnm.worker.process import StudyWorker, run_process
from tests.model.test_real_appearance import OOD_TEXT, REAL_FRAMES, mr_like, real_frame_studies, rewrite

pytestmark = [pytest.mark.e2e]

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODELS = (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL)


def _shipped() -> None:
    missing = [m for m in MODELS if not provenance.model_file(MODEL_REPOSITORY, m).is_file()]
    missing += [] if (MODEL_REPOSITORY / "tmdl" / "1" / "ood.json").is_file() else ["tmdl/1/ood.json"]
    if missing:  # the repository ships its models: their absence is a broken checkout, never a skip
        pytest.fail(f"model_repository/ lacks {missing}")


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    need_triton()
    _shipped()
    server = TritonServer(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"), list(MODELS)).start(timeout_s=240)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, list[Path]]:
    from llnm.phantom.layout import write_phantom_set

    root = tmp_path_factory.mktemp("studies")
    phantom = sorted(write_phantom_set(root / "phantom", studies=1, seed=7).rglob("*.dcm"))  # as `llnm phantom`
    out = {"phantom": rewrite(phantom, root / "in"), "altered": rewrite(phantom, root / "mr-like", mr_like)}
    if (REAL_FRAMES / "image").is_dir():
        for i, files in enumerate(real_frame_studies(root / "real", 3)):
            out[f"real-{i}"] = files
    return out


def _decision(summary: dict) -> tuple:
    code = (summary.get("not_assessable") or {}).get("code")
    return summary["assessable"], code, summary["probability"]


def _spooled(settings: Settings, files: list[Path]) -> str:
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    spool = Spool(settings.spool_dir, 0)
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        spool.store(uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), path.read_bytes())
    AuditTrail.for_data_dir(settings.data_dir).set_state(uid, A.QUEUED, calling_ae="MODALITY")
    return uid


def _through_worker(settings: Settings, backend, files: list[Path]) -> tuple[dict, list]:
    uid = _spooled(settings, files)
    assert run_process(StudyWorker(settings, backend), uid, "t1", 1).action == "done"
    folder = settings.results_path / uid
    return json.loads((folder / "summary.json").read_text()), [pydicom.dcmread(p) for p in folder.glob("*.dcm")]


def _texts(items) -> set[str]:
    out: set[str] = set()
    for item in items:
        if "TextValue" in item:
            out.add(str(item.TextValue))
        out |= _texts(item.get("ContentSequence", []))
    return out


def test_the_same_decision_through_predict_the_worker_and_triton(studies, triton, tmp_path):
    ort = OnnxRuntimeBackend(MODEL_REPOSITORY, threads=1)
    decisions = {}
    for name, files in studies.items():
        groups, _ = group_by_study(files)
        (group,) = groups.values()
        predicted = predict_study(group, ort, Settings.from_env(environ={}, key_images=True)).summary
        local = Settings.from_env(environ={}, data_dir=tmp_path / name / "ort")
        on_ort, _ = _through_worker(local, ort, files)
        remote = Settings.from_env(environ={}, data_dir=tmp_path / name / "triton", model_repository=MODEL_REPOSITORY,
                                   inference_backend="triton", triton_url=triton.grpc_url)
        on_triton, objects = _through_worker(
            remote, TritonBackend(remote.triton_url, timeout_s=120, model_repository=MODEL_REPOSITORY), files)
        a, b, c = _decision(predicted), _decision(on_ort), _decision(on_triton)
        assert a[:2] == b[:2] == c[:2], (name, a, b, c)
        if a[2] is not None:
            assert b[2] == pytest.approx(a[2], abs=1e-4) and c[2] == pytest.approx(a[2], abs=1e-3), name
        decisions[name] = (a, on_triton, objects)

    (assessable, code, probability), _, _ = decisions["phantom"]
    assert assessable and code is None and 0.0 <= probability <= 1.0
    (assessable, code, probability), summary, objects = decisions["altered"]
    assert not assessable and code == "out_of_distribution" and probability is None
    assert OOD_TEXT in summary["finding"] and summary["contributions"] == {}
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    assert any(OOD_TEXT in text for text in _texts(sr.ContentSequence))
    assert "SEG" not in {ds.Modality for ds in objects}
    real = [n for n in decisions if n.startswith("real-")]
    assert bool(real) == (REAL_FRAMES / "image").is_dir()
    for name in real:  # real appearance is what the model was trained on
        (assessable, code, probability), _, _ = decisions[name]
        assert code != "out_of_distribution", name
    assert not real or any(decisions[n][0][2] is not None for n in real)
