"""Shared test helpers for the service and end-to-end tests: real DICOM files, a real Orthanc, a
stand-in for the pipeline (for the service mechanics while trained models are missing), metrics."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-SECRET"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval_s)


def make_us(study_uid: str, series_uid: str, sop_uid: str | None = None, *, modality: str = "US",
            sop_class: str = US_IMAGE_STORAGE, manufacturer: str = "Test Scanner", size: int = 32) -> Dataset:
    """A small but complete single-frame greyscale image with patient data in its header."""
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20250101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ReferringPhysicianName = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(size * size) % 251).astype(np.uint8).tobytes()
    return ds


def write_study(folder: Path, series: int = 1, per_series: int = 2, study_uid: str | None = None,
                **kwargs: Any) -> tuple[str, list[Path]]:
    study_uid = study_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = make_us(study_uid, series_uid, **kwargs)
            ds.InstanceNumber = i + 1
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return study_uid, paths


# -- the pipeline stand-in ----------------------------------------------------------------------------------
STANDIN_PROBABILITY = 0.4242


def drawn_analyse(study: Any, backend: Any) -> Any:
    """Stands in for the models only: an ellipse gland with a nodule in each view, a fixed probability.
    Everything around it (reading, SEG/SR/key image writing, sending) is the real code."""
    from llnm.study import StudyResult, ViewResult

    delay = float(os.environ.get("LLNM_TEST_STANDIN_DELAY_S", "0"))
    if delay:
        time.sleep(delay)
    views = []
    for view in study.views:
        h, w = view.image.shape
        yy, xx = np.mgrid[:h, :w]
        gland = ((yy - h / 2) / (h * 0.3)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1
        nodule = ((yy - h / 2) / (h * 0.1)) ** 2 + ((xx - w * 0.4) / (w * 0.12)) ** 2 <= 1
        heat = np.exp(-(((yy - h / 2) / (h * 0.2)) ** 2 + ((xx - w / 2) / (w * 0.2)) ** 2)).astype(np.float32)
        views.append(ViewResult(nodule_mask=nodule, gland_mask=gland, nodule_score=0.9, heatmap=heat, used=True))
    calibrated = bool(study.views) and all(v.spacing_mm is not None for v in study.views)
    return StudyResult(
        study_uid=study.study_uid, finding="nodule", probability=STANDIN_PROBABILITY, risk_level=2,
        risk_probabilities=[0.2, 0.5, 0.3],
        contributions={"location": 0.4, "report": 0.2, "morphology": 0.3, "demographics": 0.1},
        views=views, index_view=0, capsule_distance_mm=2.5 if calibrated else None, capsule_distance_px=10.0,
        nodule_length_mm=10.0 if calibrated else None, nodule_width_mm=8.0 if calibrated else None,
        location={"vertical": "middle", "horizontal": "medial"}, calibrated=calibrated, warnings=[],
        model_versions={"nodule_seg": "standin", "thyroid_seg": "standin", "text_encoder": "standin",
                        "tmdl": "standin"})


def standin_predict(paths: list[Path], backend: Any, settings: Any) -> list:
    """llnm.predict.predict_paths with the models stood in (drawn_analyse)."""
    from llnm.predict import predict_paths

    return predict_paths(paths, backend, settings, analyse=drawn_analyse)


def standin_write_output(output: Any, out_dir: Path) -> Path:
    from llnm.predict import write_output

    return write_output(output, out_dir)


# -- Orthanc ----------------------------------------------------------------------------------------------
class Orthanc:
    """A real Orthanc on free loopback ports with storage in `workdir` (kept across restarts)."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", dicomweb: bool = False) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.user, self.password = "llnm-test", base64.b32encode(os.urandom(10)).decode()
        self.process: subprocess.Popen | None = None
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "llnm-test", "DicomAet": aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password},
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "DicomCheckModalityHost": False,
            "StableAge": 1, "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [],
            "ConcurrentJobs": 1, "LogExportedResources": False,
        }
        plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
        if dicomweb and plugin.is_file():
            config.update(Plugins=[str(plugin)], DicomWeb={"Enable": True, "Root": "/dicom-web/"})
        self.dicomweb = dicomweb and plugin.is_file()
        self.config_path = self.workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config))

    @property
    def node(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def stow_url(self) -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> "Orthanc":
        self._log = open(self.workdir / "orthanc.log", "ab")
        self.process = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(self._alive, 20):
            self.stop()
            raise RuntimeError("Orthanc did not start: " + (self.workdir / "orthanc.log").read_text()[-2000:])
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if getattr(self, "_log", None):
            self._log.close()

    def _request(self, path: str, data: bytes | None = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def get(self, path: str) -> Any:
        return self._request(path)

    def post(self, path: str, body: Any) -> Any:
        return self._request(path, json.dumps(body).encode())

    def study_instances(self, study_uid: str) -> list[dict]:
        """Simplified tags of every instance of the study (empty if Orthanc does not have it)."""
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        out = []
        for study in found:
            for inst in self.get(f"/studies/{study}/instances"):
                out.append(self.get(f"/instances/{inst['ID']}/simplified-tags"))
        return out

    def instance_file(self, sop_uid: str) -> bytes:
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances/{found[0]}/file")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()


def orthanc_available() -> bool:
    return shutil.which("Orthanc") is not None


# -- metrics ----------------------------------------------------------------------------------------------
def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} from a /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(v for (n, lab), v in samples.items()
               if n == name and all(dict(lab).get(k) == val for k, val in labels.items()))


class Service:
    """An `llnm` service subprocess with its own log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Service":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=REPO_ROOT, start_new_session=True)
        return self

    def wait_ready(self, port: int, timeout_s: float = 60.0) -> "Service":
        import urllib.request

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        if not wait_for(ready, timeout_s, 0.2):
            raise RuntimeError(f"{self.name} not ready: {self.log_tail()}")
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None
        self._log.close()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)
