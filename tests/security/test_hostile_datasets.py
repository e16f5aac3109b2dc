"""Hostile and malformed data sets (what a peer puts inside an instance) against a running listener and the
real worker: one reading of each instance everywhere, Type 2 attributes that may be missing or malformed,
and no header value in the audit trail, the CLI or the logs. Also: no file written under $HOME.

- A data set whose header read (what the listener validates) and full read (what the worker used to use)
  disagree, a second Study Instance UID after the pixel data, a repeated element, is refused 0xC000 and
  nothing is spooled; the reader skips such a file given to `llnm predict`.
- A malformed PatientBirthDate, or a US image without PatientBirthDate and AccessionNumber, is processed:
  unknown, with a warning naming the attribute, never its value.
- A SOP Instance UID of 65 characters is answered 0xC000 (cannot understand), not an association abort.
- `llnm predict` with HOME an empty folder leaves it empty (ONNX Runtime's telemetry is off).
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from prometheus_client import generate_latest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, generate_uid)
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import encode

from llnm import audit as A
from llnm.audit import AuditTrail
from llnm.config import Settings
from llnm.listener.app import Listener
from llnm.listener.dataset_check import scan_top_level
from llnm.observability import metrics
from llnm.observability.logs import JsonFormatter
from llnm.phantom.dicom import write_study_dicom
from llnm.phantom.study import generate_study
from llnm.predict import predict_paths, write_output
from llnm.study import StudyResult, ViewResult

from .conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
CANNOT_UNDERSTAND = 0xC000
#: What the hostile peer hides; none of it may reach a log, the audit trail, metrics or the CLI.
PATH_UID = "../../../../tmp/pwnresults"
PATIENT_NAME = "SECRET^PATIENT"
PATIENT_ID = "ID-987654-SECRET"
BAD_BIRTH_DATE = "1970-01-01"
MODELS = ("nodule_seg", "thyroid_seg", "text_encoder", "tmdl")



def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=tmp_path / "data", port=free_port(), ae_title="LLNM", bind_address="127.0.0.1",
        series_idle_s=0.2, study_idle_s=0.2, metrics_port=0, min_free_disk_mb=1, network_timeout_s=5)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def queued() -> list[str]:
    return []


@pytest.fixture
def listener(tmp_path: Path, queued: list[str]):
    running = Listener(_settings(tmp_path), lambda uid: queued.append(uid) or "task",
                       completion_interval_s=0.05).start()
    yield running
    running.stop()


@pytest.fixture
def chunked_send(monkeypatch):
    """Send files byte for byte (pynetdicom otherwise decodes and re-encodes them, which collapses a
    repeated element into one): a hostile peer sends what it likes."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture
def logs(caplog):
    """Every log record at DEBUG, with the library levels the services set (pynetdicom at WARNING by
    configure_logging; pydicom and highdicom at ERROR by llnm.environment)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    return caplog


def _said(caplog) -> str:
    """All a log reader would see: records as the JSON formatter writes them, their raw messages and
    arguments, and /metrics."""
    fmt = JsonFormatter()
    text = [fmt.format(r) + " " + r.getMessage() for r in caplog.records]
    return "\n".join(text) + generate_latest(metrics.REGISTRY).decode()


# -- building instances -------------------------------------------------------------------------------
def _instance(study: str, series: str, sop: str, size: int = 16) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE_STORAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19700101", "F", "ACC1"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20250101", "120000", "1", ""
    ds.Modality, ds.Manufacturer = "US", "Test Scanner"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    yy, xx = np.mgrid[:size, :size]
    ds.PixelData = ((yy * 7 + xx * 3) % 200 + 20).astype(np.uint8).tobytes()
    return ds


def _element(tag: int, vr: str, value: str) -> bytes:
    """One explicit VR little endian element (a 2-byte length VR), padded to even length."""
    data = value.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


KEYWORD_TAGS = {"StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E, "SOPInstanceUID": 0x00080018,
                "PatientID": 0x00100020}
PIXEL_DATA_HEADER = struct.pack("<HH", 0x7FE0, 0x0010)


def _hostile_file(path: Path, ds: Dataset, keyword: str, value: str, where: str) -> Path:
    """`ds` written, then a second `keyword` element: after the pixel data (where="after"), or repeated
    just before it (where="repeated")."""
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    vr = "LO" if keyword == "PatientID" else "UI"
    extra = _element(KEYWORD_TAGS[keyword], vr, value)
    if where == "after":
        raw += extra
    else:
        at = raw.rfind(PIXEL_DATA_HEADER)
        raw = raw[:at] + extra + raw[at:]
    path.write_bytes(raw)
    return path


def _associate(port: int, syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,), handlers=None):
    ae = AE(ae_title="MODALITY")
    for syntax in syntaxes:
        ae.add_requested_context(US_IMAGE_STORAGE, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", port, ae_title="LLNM", evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def _spooled(listener: Listener) -> list[Path]:
    return sorted(p for p in listener.spool.root.rglob("*") if p.is_file())


def _audit_text(data_dir: Path) -> str:
    """Everything in the audit database, as SQL text (WAL included: read through SQLite)."""
    trail = AuditTrail.for_data_dir(data_dir)
    try:
        with trail._lock:
            return "\n".join(trail._conn.iterdump())
    finally:
        trail.close()


# -- header read and full read disagree ---------------------------------------------------------------------
HOSTILE_LAYOUTS = {
    "path-like Study UID after the pixel data": ("StudyInstanceUID", PATH_UID, "after"),
    "another study's UID after the pixel data": ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.4242", "after"),
    "another Series UID after the pixel data": ("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.4343", "after"),
    "another SOP UID after the pixel data": ("SOPInstanceUID", "1.2.826.0.1.3680043.8.498.4444", "after"),
    "Study UID repeated before the pixel data": ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.4545", "repeated"),
    "another patient after the pixel data": ("PatientID", "OTHER-PATIENT-77", "after"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LAYOUTS))
def test_header_and_full_read_disagreeing_is_refused_and_nothing_spooled(listener, chunked_send, logs,
                                                                         tmp_path: Path, name: str):
    keyword, value, where = HOSTILE_LAYOUTS[name]
    study, series = generate_uid(), generate_uid()
    path = _hostile_file(tmp_path / "hostile.dcm", _instance(study, series, generate_uid()), keyword, value, where)
    full = pydicom.dcmread(path)  # what a full read believes: the hostile value
    assert str(full.get(keyword)) == value
    clean = _instance(study, series, generate_uid())
    clean.save_as(tmp_path / "clean.dcm", enforce_file_format=True)

    assoc = _associate(listener.port)
    try:
        assert int(assoc.send_c_store(str(path)).Status) == CANNOT_UNDERSTAND
        assert _spooled(listener) == [], "a refused instance left a file in the spool"
        assert int(assoc.send_c_store(str(tmp_path / "clean.dcm")).Status) == 0  # the association goes on
    finally:
        assoc.release()
    assert [p.name for p in listener.spool.instances(study)] == [f"{clean.SOPInstanceUID}.dcm"]
    assert not list(Path("/tmp").glob("pwnresults*"))

    refusals = [r for r in logs.records if r.getMessage() == "instance refused: ambiguous data set"]
    assert refusals and refusals[0].levelno == logging.WARNING
    assert refusals[0].llnm_fields["error"] == keyword  # names the attribute ...
    said = _said(logs) + _audit_text(listener.settings.data_dir)
    for secret in (value, PATIENT_NAME, PATIENT_ID):  # ... never a value
        assert secret not in said


def test_deflated_data_set_inflating_past_the_size_limit_is_refused(tmp_path: Path, chunked_send):
    """A small deflated file that inflates to many times the instance limit: refused, never inflated whole."""
    settings = _settings(tmp_path, max_instance_mb=1)
    running = Listener(settings, lambda uid: "task", completion_interval_s=0.05).start()
    try:
        ds = _instance(generate_uid(), generate_uid(), generate_uid(), size=4096)  # 16 MB of pixels
        ds.PixelData = bytes(4096 * 4096)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        path = tmp_path / "bomb.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert path.stat().st_size < 1024 * 1024
        assoc = _associate(running.port, (DeflatedExplicitVRLittleEndian,))
        try:
            assert int(assoc.send_c_store(str(path)).Status) == CANNOT_UNDERSTAND
        finally:
            assoc.release()
        assert _spooled(running) == []
    finally:
        running.stop()


def test_sop_instance_uid_of_65_characters_is_answered_cannot_understand(listener):
    """pynetdicom will not send such a request, so the request is rewritten on its way out: a 65-character
    Affected SOP Instance UID in the command set and the data set. The listener answers 0xC000 on a live
    association instead of letting pynetdicom's reader thread abort it."""
    long_uid = "1." + "2" * 63
    assert len(long_uid) == 65
    study, series = generate_uid(), generate_uid()

    def rewrite(event):
        message = event.message
        if type(message).__name__ == "C_STORE_RQ":
            message.command_set.AffectedSOPInstanceUID = long_uid
            hostile = _instance(study, series, long_uid)
            message.data_set = io.BytesIO(encode(hostile, False, True))

    assoc = _associate(listener.port, handlers=[(evt.EVT_DIMSE_SENT, rewrite)])
    try:
        response = assoc.send_c_store(_instance(study, series, generate_uid()))
        assert response is not None and "Status" in response, "no response: the association was aborted"
        assert int(response.Status) == CANNOT_UNDERSTAND
        assert assoc.is_established
    finally:
        if assoc.is_alive():
            assoc.release()
    assert _spooled(listener) == []


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_top_level_walk_reads_each_transfer_syntax_as_the_header_read_does(tmp_path: Path, syntax: str):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    ds = _instance(study, series, sop)
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    top = scan_top_level(path, 1 << 26)
    assert top.uids == {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
    assert top.elements == len(pydicom.dcmread(path))


def test_top_level_walk_refuses_none_of_pydicoms_test_files():
    """No false refusal: every Part 10 file pydicom ships (real scanners' files among them, one with its
    pixel data cut short) is one unambiguous reading whose UIDs equal the header read's."""
    import pydicom.data

    folders = [Path(pydicom.data.__file__).parent / "test_files"]
    try:  # pydicom-data, when installed (listed directly: get_testdata_files would try to download)
        import data_store

        folders.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    checked = 0
    for name in sorted(p for folder in folders for p in folder.iterdir()):
        if not name.is_file():
            continue
        with open(name, "rb") as fh:
            if fh.read(132)[128:] != b"DICM":
                continue
        try:
            header = pydicom.dcmread(name, stop_before_pixels=True)
        except Exception:
            continue  # the header read refuses it already
        top = scan_top_level(name, 1 << 30)
        for keyword, value in top.uids.items():
            assert str(header.get(keyword, "")).strip() == value, (name, keyword)
        checked += 1
    assert checked > 100


# -- the reader: one reading of each file -----------------------------------------------------------------
def _drawn(study, backend) -> StudyResult:
    """The models stood in: a gland and a nodule drawn in each view (reading and writing are real)."""
    views = []
    for view in study.views:
        h, w = view.image.shape
        yy, xx = np.mgrid[:h, :w]
        gland = ((yy - h / 2) / (h * 0.3)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1
        nodule = ((yy - h / 2) / (h * 0.1)) ** 2 + ((xx - w * 0.4) / (w * 0.12)) ** 2 <= 1
        views.append(ViewResult(nodule_mask=nodule, gland_mask=gland, nodule_score=0.9,
                                heatmap=np.zeros((h, w), np.float32), used=True))
    return StudyResult(study_uid=study.study_uid, finding="nodule", probability=0.5, risk_level=2,
                       risk_probabilities=[0.25, 0.5, 0.25], contributions={"morphology": 1.0}, views=views,
                       index_view=0, capsule_distance_px=10.0, location={"vertical": "middle"},
                       calibrated=False, warnings=[], model_versions={"tmdl": "standin"})


def test_reader_skips_a_file_whose_full_read_names_another_study(tmp_path: Path):
    """`llnm predict` (and the worker) on files a listener never checked: the file is grouped and written
    under its header read's UIDs; a full read that disagrees skips the instance; an invalid header UID
    never becomes a folder."""
    study, series = generate_uid(), generate_uid()
    src = tmp_path / "in"
    src.mkdir()
    _instance(study, series, generate_uid(), size=64).save_as(src / "clean.dcm", enforce_file_format=True)
    _hostile_file(src / "trailing.dcm", _instance(study, series, generate_uid(), size=64), "StudyInstanceUID",
                  PATH_UID, "after")
    bad_header = _instance(generate_uid(), series, generate_uid(), size=64)
    bad_header.StudyInstanceUID = "../../escaped"
    bad_header.save_as(src / "badheader.dcm", enforce_file_format=True)

    outputs = predict_paths([src], None, Settings(data_dir=tmp_path / "data"), analyse=_drawn)
    assert [o.study_uid for o in outputs] == [study]
    output = outputs[0]
    assert any("header and full read disagree (StudyInstanceUID)" in w for w in output.summary["warnings"])
    assert len(output.summary["views"]) == 1  # the clean instance only
    assert output.datasets and all(str(ds.StudyInstanceUID) == study for ds in output.datasets)
    folder = write_output(output, tmp_path / "out")
    assert folder == tmp_path / "out" / study
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all((tmp_path / "out") in p.parents or src in p.parents for p in written)
    for ds in output.datasets:
        assert PATH_UID not in str(ds) and "escaped" not in str(ds)


# -- malformed and missing Type 2 attributes, processed by the real worker ----------------------------------
def _needs_models() -> None:
    missing = [m for m in MODELS if not (REPO_ROOT / "model_repository" / m / "1" / "model.onnx").is_file()]
    if missing:
        pytest.skip(f"models missing from model_repository/: {missing} (run scripts/setup.sh)")


def _phantom(tmp_path: Path, index: int) -> list[Path]:
    study = generate_study(seed=16, index=index)
    return write_study_dicom(study, tmp_path / "phantom")


def _send_files(port: int, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    for sop_class in sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", port, ae_title="LLNM")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(str(p)).Status) for p in paths]
    finally:
        assoc.release()


def _wait_queued(queued: list[str], uid: str, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while uid not in queued and time.monotonic() < end:
        time.sleep(0.05)
    assert uid in queued, "the listener did not queue the completed study"


def _cli(monkeypatch, capsys, data_dir: Path, *argv: str) -> str:
    from llnm.cli import main

    monkeypatch.setenv("LLNM_DATA_DIR", str(data_dir))
    main(list(argv))
    return capsys.readouterr().out


def _process_for_real(listener: Listener, queued: list[str], paths: list[Path]) -> str:
    """Send a study to the listener, wait until it is queued, run the real worker step with ONNX Runtime."""
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.worker.process import StudyWorker, run_process

    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    assert _send_files(listener.port, paths) == [0] * len(paths)
    _wait_queued(queued, uid)
    settings = listener.settings
    worker = StudyWorker(settings, OnnxRuntimeBackend(settings.model_repository), audit=listener.audit)
    assert run_process(worker, uid, "task-1", 1).action == "done"
    return uid


def _edit(paths: list[Path], change) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        change(ds)
        ds.save_as(p, enforce_file_format=True)


def _assert_processed(listener: Listener, uid: str) -> dict:
    row = listener.audit.study(uid)
    assert row["state"] == A.DONE and row["error"] is None, row
    summary = json.loads((listener.settings.results_path / uid / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["objects"], summary
    for obj in summary["objects"]:
        ds = pydicom.dcmread(listener.settings.results_path / uid / obj["file"])
        assert str(ds.StudyInstanceUID) == uid  # the UID the listener validated and spooled
        assert str(ds.PatientBirthDate) == ""  # unknown, never invented
    return summary


def test_malformed_birth_date_is_processed_and_never_shown(listener, queued, logs, tmp_path: Path,
                                                           monkeypatch, capsys):
    _needs_models()
    paths = _phantom(tmp_path, index=1)

    def malformed(ds: Dataset) -> None:
        ds.PatientBirthDate = BAD_BIRTH_DATE
        ds.PatientName = PATIENT_NAME

    _edit(paths, malformed)
    uid = _process_for_real(listener, queued, paths)
    summary = _assert_processed(listener, uid)
    assert "PatientBirthDate malformed: treated as unknown (written empty)" in summary["warnings"]

    data_dir = listener.settings.data_dir
    shown = _audit_text(data_dir) + _said(logs)
    shown += _cli(monkeypatch, capsys, data_dir, "studies")
    shown += _cli(monkeypatch, capsys, data_dir, "studies", "--json")
    shown += _cli(monkeypatch, capsys, data_dir, "status", uid)
    shown += _cli(monkeypatch, capsys, data_dir, "status", uid, "--json")
    assert uid in shown
    for secret in (BAD_BIRTH_DATE, PATIENT_NAME):
        assert secret not in shown
    repaired = [r for r in logs.records if r.getMessage().startswith("patient or study attribute")]
    assert repaired and repaired[0].llnm_fields == {"study_uid": uid, "reason": "PatientBirthDate malformed"}


def test_missing_birth_date_and_accession_number_are_processed(listener, queued, logs, tmp_path: Path):
    _needs_models()
    paths = _phantom(tmp_path, index=2)

    def strip(ds: Dataset) -> None:
        del ds.PatientBirthDate
        del ds.AccessionNumber

    _edit(paths, strip)
    uid = _process_for_real(listener, queued, paths)
    summary = _assert_processed(listener, uid)
    for keyword in ("AccessionNumber", "PatientBirthDate"):
        assert f"{keyword} missing: treated as unknown (written empty)" in summary["warnings"]
    for obj in summary["objects"]:
        ds = pydicom.dcmread(listener.settings.results_path / uid / obj["file"])
        assert "AccessionNumber" in ds and str(ds.AccessionNumber) == ""  # Type 2: present, empty


def test_worker_failure_is_recorded_without_the_header_value_it_quotes(tmp_path: Path, monkeypatch, capsys):
    """A library exception quoting a header value (pydicom's, highdicom's) is recorded by type only."""
    from llnm.worker.process import StudyWorker, run_process

    settings = _settings(tmp_path)
    paths = _phantom(tmp_path, index=3)
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    from llnm.storage.spool import Spool

    spool = Spool(settings.spool_dir, 0)
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        spool.store(uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), p.read_bytes())

    def quoting(paths, backend, s):
        raise ValueError(f"Unable to convert '{BAD_BIRTH_DATE}' to 'DA' object")

    worker = StudyWorker(settings, None, predict=quoting, write_output=lambda o, d: d)
    assert run_process(worker, uid, "task-1", 1).action == "done"
    row = worker.audit.study(uid)
    assert row["state"] == A.FAILED and row["error"] == "ValueError"
    shown = _audit_text(settings.data_dir)
    shown += _cli(monkeypatch, capsys, settings.data_dir, "studies", "--failed")
    shown += _cli(monkeypatch, capsys, settings.data_dir, "status", uid)
    assert "ValueError" in shown and BAD_BIRTH_DATE not in shown


# -- nothing written under $HOME --------------------------------------------------------------------------
def test_prediction_writes_nothing_under_home(tmp_path: Path):
    """`llnm predict` with the real models, HOME an empty folder and no XDG cache or telemetry variable
    set by the caller: the results folder is written, HOME stays empty (ONNX Runtime's telemetry database
    and device id used to appear under ~/.cache/Microsoft). Its own logs and stderr, as the product
    configures them, never show the malformed birth date or the name of the study it reads."""
    _needs_models()
    paths = _phantom(tmp_path, index=4)

    def malformed(ds: Dataset) -> None:
        ds.PatientBirthDate = BAD_BIRTH_DATE
        ds.PatientName = PATIENT_NAME

    _edit(paths, malformed)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "ORT_", "HF_", "LLNM_")) and k != "DO_NOT_TRACK"}
    env.update(HOME=str(home), LLNM_MODEL_REPOSITORY=str(REPO_ROOT / "model_repository"),
               LLNM_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, "-m", "llnm", "predict", "--out", str(tmp_path / "out"),
                           str(paths[0].parent)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = list((tmp_path / "out").glob("*/summary.json"))
    assert summaries and json.loads(summaries[0].read_text())["status"] == "ok"
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
    assert "study analysed" in proc.stderr  # the JSON logs are there ...
    for secret in (BAD_BIRTH_DATE, PATIENT_NAME):  # ... without the header's values
        assert secret not in proc.stdout + proc.stderr


def test_pydicom_value_warnings_stay_out_of_the_logs_whatever_imports_first():
    """pydicom sets its logger to WARNING when first imported; a service imports `llnm` (which sets it to
    ERROR) before anything reads a data set. In a fresh interpreter, in that order, a malformed UID and
    birth date read through pydicom reach neither the JSON logs nor stderr."""
    code = (
        "import llnm, logging\n"
        "from llnm.observability.logs import configure_logging\n"
        "configure_logging('DEBUG')\n"
        "import pydicom\n"
        "from pydicom.dataset import Dataset\n"
        "ds = Dataset()\n"
        "ds.StudyInstanceUID = '../../../../tmp/pwnresults'\n"
        f"ds.PatientBirthDate = {BAD_BIRTH_DATE!r}\n"
        "logging.getLogger('llnm').warning('done')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"done"' in proc.stderr or "done" in proc.stderr  # the product's own log line is there ...
    assert "pwnresults" not in proc.stderr + proc.stdout  # ... pydicom's quoting of the values is not
    assert BAD_BIRTH_DATE not in proc.stderr + proc.stdout
