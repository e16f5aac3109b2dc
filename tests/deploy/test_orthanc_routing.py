"""The compose file's test PACS (deploy/orthanc/): a real Orthanc with that configuration and Lua
script routes ultrasound series to the LLNM node, and nothing else (no CT, no loop on results)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("Orthanc", "storescp", "storescu")),
        reason="needs Orthanc and dcmtk (scripts/test-services.sh installs them)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_instance(path: Path, modality: str, study_uid: str) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if modality == "US":
        ds.Modality = "US"
        ds.SOPClassUID = US_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.save_as(path, enforce_file_format=True)


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def pacs(tmp_path: Path):
    """Orthanc from deploy/orthanc/orthanc.json (ports, paths and StableAge changed for a test) and
    a dcmtk storescp standing in for the LLNM listener."""
    config = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    received = tmp_path / "received"
    received.mkdir()
    scp_port, dicom_port, http_port = _free_port(), _free_port(), _free_port()
    llnm = config["DicomModalities"]["llnm"]
    scp = subprocess.Popen(
        ["storescp", "-aet", llnm["AET"], "-od", str(received), str(scp_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "db"
    config.update(
        DicomPort=dicom_port, HttpPort=http_port, StorageDirectory=str(db), IndexDirectory=str(db),
        RemoteAccessAllowed=False, StableAge=1,
        LuaScripts=[str(DEPLOY / "orthanc" / Path(p).name) for p in config["LuaScripts"]],
    )
    config["DicomModalities"]["llnm"] = dict(llnm, Host="127.0.0.1", Port=scp_port)
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    orthanc = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], stdout=log, stderr=log)
    user, password = next(iter(config["RegisteredUsers"].items()))
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()

    def rest(path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}",
                                     headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def up() -> bool:
        try:
            rest("/system")
            return True
        except OSError:
            return False

    try:
        assert _wait(up, 20), (tmp_path / "orthanc.log").read_text()
        yield {"dicom_port": dicom_port, "aet": config["DicomAet"], "received": received,
               "rest": rest, "tmp": tmp_path}
    finally:
        orthanc.terminate()
        scp.terminate()
        orthanc.wait(10)
        scp.wait(10)
        log.close()


def _store(pacs, path: Path, calling_aet: str) -> None:
    subprocess.run(["storescu", "-aet", calling_aet, "-aec", pacs["aet"], "127.0.0.1",
                    str(pacs["dicom_port"]), str(path)], check=True, capture_output=True, timeout=30)


def test_us_series_is_routed_to_llnm_and_other_series_are_not(pacs):
    study = generate_uid()
    us, ct, result = pacs["tmp"] / "us.dcm", pacs["tmp"] / "ct.dcm", pacs["tmp"] / "result.dcm"
    _write_instance(us, "US", study)
    _write_instance(ct, "CT", study)
    _write_instance(result, "US", study)  # as if the LLNM node sent an US-modality object back
    _store(pacs, us, "MODALITY")
    _store(pacs, ct, "MODALITY")
    _store(pacs, result, "LLNM")

    us_uid = pydicom.dcmread(us).SOPInstanceUID
    assert _wait(lambda: any(pacs["received"].iterdir()), 20), "the US series was not routed"
    # every series has become stable (and its Lua callback has run) before we look at what arrived
    assert _wait(lambda: all(pacs["rest"](f"/series/{s}")["IsStable"]
                             for s in pacs["rest"]("/series")), 20)
    time.sleep(1.0)
    assert _wait(lambda: all(j["State"] in ("Success", "Failure")
                             for j in pacs["rest"]("/jobs?expand")), 20)
    got = [pydicom.dcmread(p).SOPInstanceUID for p in pacs["received"].iterdir()]
    assert got == [us_uid]
