"""The compose file's test PACS (deploy/orthanc/): a real Orthanc with that configuration and Lua
script routes ultrasound and report (SR) series to the LLNM node, and nothing else: no CT, and no
loop on the results the LLNM node sends back into the study."""

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
#: SOP classes by the modality the test writes.
SOP_CLASSES = {"US": "1.2.840.10008.5.1.4.1.1.6.1", "SR": "1.2.840.10008.5.1.4.1.1.88.11"}

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
    if modality in SOP_CLASSES:
        ds.Modality = modality
        ds.SOPClassUID = SOP_CLASSES[modality]
        ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
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


def test_us_and_report_series_are_routed_to_llnm_and_nothing_else(pacs):
    study = generate_uid()
    sent = {}
    for name, modality, calling_aet in [("us", "US", "MODALITY"), ("report", "SR", "RIS"), ("ct", "CT", "MODALITY"),
                                        ("result_sr", "SR", "LLNM"), ("result_us", "US", "LLNM")]:
        path = pacs["tmp"] / f"{name}.dcm"
        _write_instance(path, modality, study)
        _store(pacs, path, calling_aet)
        sent[name] = pydicom.dcmread(path).SOPInstanceUID

    assert _wait(lambda: len(list(pacs["received"].iterdir())) >= 2, 20), "US and report were not routed"
    # every series has become stable (and its Lua callback has run) before we look at what arrived
    assert _wait(lambda: all(pacs["rest"](f"/series/{s}")["IsStable"]
                             for s in pacs["rest"]("/series")), 20)
    time.sleep(1.0)
    assert _wait(lambda: all(j["State"] in ("Success", "Failure")
                             for j in pacs["rest"]("/jobs?expand")), 20)
    got = sorted(pydicom.dcmread(p).SOPInstanceUID for p in pacs["received"].iterdir())
    assert got == sorted([sent["us"], sent["report"]])
