"""The worker records what the quality gate declined: an audit event and bounded Prometheus counters; a
not-assessable study is a result (state done), written without SEG. Real reading and writing, no models."""

from __future__ import annotations

import json

import pydicom
import pytest
from pydicom.uid import generate_uid

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.storage.spool import Spool
from llnm.observability import metrics
from llnm.predict import predict_paths
from llnm.quality import CODES
from llnm.worker.process import StudyWorker, run_process
from tests.dicom.conftest import OUTSIDE_TEXT, declined_quality, declined_result, drawn_result, make_us


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env(environ={}, data_dir=tmp_path / "var")


def _spool(settings, tmp_path, views: int = 1) -> str:
    uid = generate_uid()
    spool = Spool(settings.spool_dir, 0)
    for n in range(views):
        ds = make_us(tmp_path / "src" / f"{n}.dcm", study_uid=uid)
        path = tmp_path / "src" / f"{n}.dcm"
        spool.store(uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), path.read_bytes())
    AuditTrail.for_data_dir(settings.data_dir).set_state(uid, A.QUEUED, calling_ae="MODALITY")
    return uid


def _worker(settings, analyse) -> StudyWorker:
    return StudyWorker(settings, backend=object(),
                       predict=lambda paths, backend, s: predict_paths(paths, backend, s, analyse=analyse))


def _count(name: str, reason: str) -> float:
    return metrics.REGISTRY.get_sample_value(f"{name}_total", {"reason": reason}) or 0.0


def test_a_not_assessable_study_is_audited_counted_and_done(settings, tmp_path):
    uid = _spool(settings, tmp_path)
    studies, views = _count("llnm_studies_not_assessable", "nodule_outside_gland"), \
        _count("llnm_views_declined", "nodule_outside_gland")
    assert run_process(_worker(settings, lambda s, b: declined_result(s)), uid, "t1", 1).action == "done"
    audit = AuditTrail.for_data_dir(settings.data_dir)
    assert audit.study(uid)["state"] == A.DONE and audit.study(uid)["probability"] is None
    (event,) = [e for e in audit.events(uid) if e["event"] == "not assessable"]
    assert event["reason"] == "nodule_outside_gland" and event["text"] == OUTSIDE_TEXT
    assert event["views_declined"] == {"1": "nodule_outside_gland"}
    assert _count("llnm_studies_not_assessable", "nodule_outside_gland") == studies + 1
    assert _count("llnm_views_declined", "nodule_outside_gland") == views + 1
    folder = settings.results_path / uid
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["assessable"] is False and summary["not_assessable"]["code"] == "nodule_outside_gland"
    modalities = sorted(pydicom.dcmread(p).Modality for p in folder.glob("*.dcm"))
    assert modalities == ["SR", "US"]  # the SR and the key image; no SEG of a declined mask


def test_a_declined_view_of_an_assessable_study_is_counted_not_the_study(settings, tmp_path):
    uid = _spool(settings, tmp_path, views=2)

    def second_declined(study, backend):
        result = drawn_result(study)
        result.views[1].used = False
        result.views[1].quality = declined_quality("irregular_mask", "nodule outline not compact (solidity 0.41)")
        return result

    studies = {c: _count("llnm_studies_not_assessable", c) for c in CODES}
    views = _count("llnm_views_declined", "irregular_mask")
    assert run_process(_worker(settings, second_declined), uid, "t1", 1).action == "done"
    audit = AuditTrail.for_data_dir(settings.data_dir)
    assert audit.study(uid)["state"] == A.DONE and audit.study(uid)["probability"] is not None
    events = audit.events(uid)
    assert not [e for e in events if e["event"] == "not assessable"]
    (event,) = [e for e in events if e["event"] == "views declined"]
    assert event["views"] == {"2": "irregular_mask"}
    assert _count("llnm_views_declined", "irregular_mask") == views + 1
    assert {c: _count("llnm_studies_not_assessable", c) for c in CODES} == studies


def test_gate_metrics_exist_for_every_code_and_only_for_those():
    for name in ("llnm_studies_not_assessable", "llnm_views_declined"):
        reasons = {s.labels["reason"] for m in metrics.REGISTRY.collect() if m.name == name for s in m.samples}
        assert reasons == set(CODES), name
