"""What a worker records as the models of a result is what Triton served, and a worker refuses to run a
model Triton serves that is not its own: the real tritonserver serving model_repository/ (Python-backend
copies made by triton_harness, their config.pbtxt parameters kept, llnm_sha256 among them), the real
worker (StudyWorker, the whole pipeline, SR and summary.json written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from triton_harness import TritonServer, need_triton

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import REPO_ROOT, Settings
from llnm.inference import provenance
from llnm.inference.backend import NODULE_SEG, TEXT_ENCODER, THYROID_SEG, TMDL
from llnm.inference.triton_backend import TritonBackend
from llnm.storage.spool import Spool
from llnm.observability import metrics
from llnm.worker.process import StudyWorker, run_process

pytestmark = [pytest.mark.e2e]

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODELS = (NODULE_SEG, THYROID_SEG, TEXT_ENCODER, TMDL)


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """Triton serving the shipped model repository, as the chart serves it (the e2e fixture's server)."""
    need_triton()
    missing = [m for m in MODELS if not provenance.model_file(MODEL_REPOSITORY, m).is_file()]
    if missing:  # the repository ships its models: their absence is a broken checkout, never a skip
        pytest.fail(f"model_repository/ lacks {missing}")
    server = TritonServer(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"), list(MODELS)).start(timeout_s=240)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> list[Path]:
    from llnm.phantom.layout import write_phantom_set

    out = write_phantom_set(tmp_path_factory.mktemp("phantom"), studies=1, seed=7, rows=300, cols=400)
    return sorted(out.rglob("*.dcm"))


def _spooled(settings: Settings, files: list[Path]) -> str:
    """The phantom study under a new StudyInstanceUID in the worker's spool, queued in its audit trail."""
    uid = generate_uid()
    spool = Spool(settings.spool_dir, 0)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = uid
        tmp = settings.data_dir / "in.dcm"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(tmp, enforce_file_format=True)
        spool.store(uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), tmp.read_bytes())
    AuditTrail.for_data_dir(settings.data_dir).set_state(uid, A.QUEUED, calling_ae="MODALITY")
    return uid


def _worker(tmp_path: Path, triton: TritonServer, repository: Path) -> StudyWorker:
    """A worker as `llnm worker` makes it: the Triton backend, its own model repository (its image's)."""
    settings = Settings.from_env(environ={}, data_dir=tmp_path / "var", model_repository=repository,
                                 inference_backend="triton", triton_url=triton.grpc_url)
    return StudyWorker(settings, TritonBackend(settings.triton_url, timeout_s=120, model_repository=repository))


def _requests(triton: TritonServer) -> dict:
    """Triton's request counts per model (successes and failures)."""
    return {k: v for k, v in triton.metrics().items() if k[0].startswith("nv_inference_request_")}


def _text_values(items) -> set[str]:
    """Every TEXT value in an SR content tree."""
    out: set[str] = set()
    for item in items:
        if "TextValue" in item:
            out.add(str(item.TextValue))
        out |= _text_values(item.get("ContentSequence", []))
    return out


def _served(model: str) -> str:
    """The sha256 Triton's config of `model` declares (what it serves)."""
    return provenance.declared_in_text(provenance.config_file(MODEL_REPOSITORY, model).read_text())


def test_the_result_names_the_models_triton_served(triton, phantom_files, tmp_path):
    worker = _worker(tmp_path, triton, MODEL_REPOSITORY)
    uid = _spooled(worker.settings, phantom_files)
    assert run_process(worker, uid, "t1", 1).action == "done"
    assert AuditTrail.for_data_dir(worker.settings.data_dir).study(uid)["state"] == A.DONE
    served = {m: _served(m)[:provenance.SHORT] for m in MODELS}
    folder = worker.settings.results_path / uid
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["algorithm"]["models"] == served
    (sr,) = [ds for ds in map(pydicom.dcmread, folder.glob("*.dcm")) if ds.Modality == "SR"]
    ours = [item for item in sr.ContributingEquipmentSequence if "LLNM worker" in str(item.Manufacturer)]
    texts = _text_values(sr.ContentSequence)  # TID 4019 Algorithm Parameters: "model=sha256"
    for model, digest in served.items():
        assert f"{model} {digest}" in list(sr.SoftwareVersions) == list(ours[0].SoftwareVersions)
        assert f"{model}={digest}" in texts


def test_a_worker_refuses_a_served_model_that_is_not_its_own(triton, phantom_files, tmp_path):
    """The worker's image carries a retrained gland model; Triton still serves the old one (a rollout, or
    source=pvc with another repository). The study is refused before any model runs, retried, and the audit
    trail says which model and both hashes."""
    own = tmp_path / "image_models"
    own.mkdir()
    for model in MODELS:  # the worker's repository: the shipped files, but another thyroid_seg/1/model.onnx
        (own / model).symlink_to(MODEL_REPOSITORY / model)
    (own / THYROID_SEG).unlink()
    shutil.copytree(MODEL_REPOSITORY / THYROID_SEG, own / THYROID_SEG)
    with open(own / THYROID_SEG / "1" / "model.onnx", "ab") as f:
        f.write(b"retrained")  # only its bytes matter here: the worker hashes its file, Triton runs its own
    retrained = provenance.file_sha256(own / THYROID_SEG / "1" / "model.onnx")

    worker = _worker(tmp_path, triton, own)
    uid = _spooled(worker.settings, phantom_files)
    refused = metrics.REGISTRY.get_sample_value("llnm_triton_model_mismatches_total", {"model": THYROID_SEG})
    ran = _requests(triton)
    step = run_process(worker, uid, "t1", 1)
    assert step.action == "process" and step.attempt == 2  # retried later, not dead-lettered at once
    audit = AuditTrail.for_data_dir(worker.settings.data_dir)
    (retry,) = [e for e in audit.events(uid) if e["event"] == "retry"]
    error = retry["error"]
    assert error.startswith("ModelMismatch: Triton at") and "'thyroid_seg'" in error, error
    assert _served(THYROID_SEG)[:12] in error and retrained[:12] in error and "refusing" in error
    assert audit.study(uid)["state"] == A.QUEUED
    assert not (worker.settings.results_path / uid).exists()  # no result names a model that was not used
    assert metrics.REGISTRY.get_sample_value(
        "llnm_triton_model_mismatches_total", {"model": THYROID_SEG}) == refused + 1
    assert _requests(triton) == ran  # no inference reached Triton: the check comes first
