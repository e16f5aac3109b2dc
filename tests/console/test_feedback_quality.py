"""Radiologist feedback and pathology outcomes through the API, the corrected outline from a viewer's SEG
or SR, and what they become: agreement and AUC/sensitivity/specificity on the console and in Prometheus."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from console_support import make_client
from prometheus_client import CollectorRegistry, generate_latest

from llnm import audit as A
from llnm.console import quality
from llnm.console.corrections import CorrectionError, mask_outline, outline_from_dicom


def _api(seeded, role: str):
    client = make_client(seeded.settings, seeded.audit, role)
    return client, {"X-CSRF-Token": client.get("/api/session").json()["csrf"]}


def test_auc_matches_the_rank_definition():
    assert quality.auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert quality.auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert quality.auc([0.5, 0.5], [1, 0]) == 0.5
    assert quality.auc([0.7, 0.4, 0.6, 0.2, 0.6], [1, 1, 0, 0, 1]) == pytest.approx(4 / 6 + 0.5 / 6 * 1)
    assert quality.auc([0.3], [1]) is None


def test_feedback_and_outcome_through_the_api_make_the_metrics(seeded):
    client, headers = _api(seeded, "radiologist")
    probabilities = [0.9, 0.8, 0.7, 0.3, 0.2, 0.6]
    outcomes = [1, 1, 0, 0, 0, 1]
    uids = []
    for i, (p, y) in enumerate(zip(probabilities, outcomes)):
        uid = f"1.2.826.0.1.3680043.10.546.{i}"
        seeded.audit.set_state(uid, A.DONE, probability=p, risk_level=2)
        seeded.audit.put_result(uid, {"probability": p}, "Scanner A" if i % 2 else "Scanner B")
        uids.append(uid)
        answer = client.post(f"/api/studies/{uid}/feedback", headers=headers,
                             json={"agree": i != 2, "tirads": 4, "size_mm": 12.5})
        assert answer.status_code == 200, answer.text
        answer = client.post(f"/api/studies/{uid}/outcome", headers=headers,
                             json={"llnm": bool(y), "metastatic_nodes": 7 if y else 0})
        assert answer.status_code == 200, answer.text
    rep = client.get("/api/quality").json()
    overall = rep["overall"]
    assert overall["agreement"] == {"studies": 6, "agree": 5, "rate": pytest.approx(5 / 6)}
    assert overall["outcomes"]["auc"] == pytest.approx(quality.auc(probabilities, outcomes))
    assert overall["outcomes"]["sensitivity"] == pytest.approx(1.0)  # 0.9, 0.8, 0.6 >= 0.5
    assert overall["outcomes"]["specificity"] == pytest.approx(2 / 3)
    assert {s["scanner_model"] for s in rep["by_scanner"]} == {"Scanner A", "Scanner B"}
    assert rep["by_month"][0]["month"] == time.strftime("%Y-%m", time.gmtime())
    page = client.get("/quality").text
    assert 'id="trend"' in page and "Scanner A" in page
    assert page.count('<circle') == 2  # one month: an AUC point and an agreement point
    registry = CollectorRegistry()
    registry.register(quality.QualityCollector(seeded.audit))
    text = generate_latest(registry).decode()
    assert f'llnm_outcome_auc{{scanner_model="all"}} {quality.auc(probabilities, outcomes)}' in text
    assert 'llnm_feedback_agreement_ratio{scanner_model="Scanner A"}' in text
    trail = [e for e in seeded.audit.events(uids[0]) if e["event"] in ("feedback", "outcome")]
    assert [e["by"] for e in trail] == ["radiologist1", "radiologist1"]


def test_bad_feedback_is_refused(seeded):
    client, headers = _api(seeded, "radiologist")
    uid = seeded.uids["done"]
    for body in ({}, {"tirads": 9}, {"size_mm": -1}, {"agree": "maybe"},
                 {"outline": {"sop_instance_uid": "1.2.3", "points": [[1, 2]]}}, {"outline": "not json"}):
        assert client.post(f"/api/studies/{uid}/feedback", headers=headers, json=body).status_code == 400, body
    assert client.post(f"/api/studies/{uid}/outcome", headers=headers, json={}).status_code == 400
    assert client.post("/api/studies/1.2.3.4/outcome", headers=headers, json={"llnm": True}).status_code == 404
    assert seeded.audit.feedback(uid) == [] and seeded.audit.outcome(uid) is None


def test_feedback_keeps_the_study_beyond_retention(seeded):
    from llnm.console import cohort

    client, headers = _api(seeded, "radiologist")
    uid = seeded.uids["done"]
    assert client.post(f"/api/studies/{uid}/outcome", headers=headers, json={"llnm": "yes"}).status_code == 200
    kept = list(cohort.sources_dir(seeded.settings, uid).glob("*/*.dcm"))
    assert len(kept) == 1
    import shutil

    shutil.rmtree(seeded.settings.spool_dir / uid)  # what retention does
    assert cohort.study_files(seeded.settings, uid) == kept


def _seg_bytes(study_uid: str, source_uid: str, mask: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.Modality = "SEG"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = mask.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 1
    src = Dataset()
    src.ReferencedSOPInstanceUID = source_uid
    src.ReferencedFrameNumber = 2
    derivation = Dataset()
    derivation.SourceImageSequence = [src]
    group = Dataset()
    group.DerivationImageSequence = [derivation]
    ds.PerFrameFunctionalGroupsSequence = [group]
    ds.PixelData = mask.astype(np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _sr_bytes(study_uid: str, source_uid: str, points: list[tuple[float, float]]) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.Modality = "SR"
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ref.ReferencedSOPInstanceUID = source_uid
    image = Dataset()
    image.ValueType = "IMAGE"
    image.ReferencedSOPSequence = [ref]
    scoord = Dataset()
    scoord.ValueType = "SCOORD"
    scoord.GraphicType = "POLYLINE"
    scoord.GraphicData = [v for x, y in points for v in (x, y)]
    scoord.ContentSequence = [image]
    group = Dataset()
    group.ValueType = "CONTAINER"
    group.ContentSequence = [scoord]
    ds.ValueType = "CONTAINER"
    ds.ContentSequence = [group]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_seg_or_sr_from_the_viewer_is_a_corrected_outline(seeded):
    from llnm.console.cohort import outline_mask

    uid = seeded.uids["done"]
    mask = np.zeros((40, 50), bool)
    mask[10:30, 15:35] = True
    outline, kind = outline_from_dicom(_seg_bytes(uid, "1.2.3.4.5", mask), uid)
    assert kind == "seg" and outline["sop_instance_uid"] == "1.2.3.4.5" and outline["frame"] == 2
    redrawn = outline_mask(outline["points"], mask.shape, (0, 0))
    assert (redrawn & mask).sum() / (redrawn | mask).sum() > 0.85
    sr, kind = outline_from_dicom(_sr_bytes(uid, "1.2.3.4.6", [(11, 21), (31, 21), (31, 41), (11, 41)]), uid)
    assert kind == "sr" and sr["points"][0] == [20.0, 10.0] and sr["sop_instance_uid"] == "1.2.3.4.6"
    with pytest.raises(CorrectionError, match="another study"):
        outline_from_dicom(_seg_bytes("1.2.3.999", "1.2.3.4.5", mask), uid)
    with pytest.raises(CorrectionError):
        outline_from_dicom(b"not dicom at all", uid)
    with pytest.raises(CorrectionError):
        mask_outline(np.zeros((5, 5), bool))

    client, headers = _api(seeded, "radiologist")
    answer = client.post(f"/api/studies/{uid}/feedback/dicom", headers={**headers, "Content-Type": "application/dicom"},
                         content=_seg_bytes(uid, "1.2.3.4.5", mask))
    assert answer.status_code == 200 and answer.json()["source"] == "seg"
    assert seeded.audit.feedback(uid)[-1]["outline"]["sop_instance_uid"] == "1.2.3.4.5"
    refused = client.post(f"/api/studies/{uid}/feedback/dicom", headers=headers, content=b"x" * 10)
    assert refused.status_code == 400


def test_scanner_labels_are_bounded():
    rows = [{"scanner_model": f"Model {i}"} for i in range(40)] + [{"scanner_model": "Big"}] * 5
    keep = quality._kept_scanners(rows)
    assert len(keep) == quality.MAX_SCANNER_LABELS and "Big" in keep
    assert quality.scanner_label('Evil"}\n', keep) == "other"


def test_an_outline_with_a_non_finite_or_implausible_point_is_refused(seeded):
    """NaN or Infinity stored in an outline made GET /api/studies/UID a 500 for everyone: such points, and
    points far outside any frame, are a 400 with a fixed message and nothing is stored."""
    uid = seeded.uids["done"]
    client, headers = _api(seeded, "radiologist")
    json_headers = {**headers, "Content-Type": "application/json"}
    for bad in ("NaN", "Infinity", "-Infinity", "-5", "70000", "1e300"):
        body = '{"outline": {"sop_instance_uid": "1.2.3", "points": [[%s, 1], [2, 3], [4, 5]]}}' % bad
        answer = client.post(f"/api/studies/{uid}/feedback", content=body.encode(), headers=json_headers)
        assert answer.status_code == 400, bad
        assert answer.json()["error"].startswith("outline: every point must be a finite"), bad
    assert seeded.audit.feedback(uid) == []
    assert client.get(f"/api/studies/{uid}").status_code == 200
    assert client.get(f"/studies/{uid}").status_code == 200
    edge = {"sop_instance_uid": "1.2.3", "points": [[-1, 0], [0, 65535], [65535.0, 12.5]]}
    assert client.post(f"/api/studies/{uid}/feedback", json={"outline": edge}, headers=headers).status_code == 200
    assert client.get(f"/api/studies/{uid}").status_code == 200


def test_an_sr_outline_with_a_non_finite_point_is_skipped_with_a_warning(seeded, caplog):
    uid = seeded.uids["done"]
    nan = _sr_bytes(uid, "1.2.3.4.6", [(11, 21), (float("nan"), 21), (31, 41)])
    with caplog.at_level("WARNING"), pytest.raises(CorrectionError, match="no polyline outline"):
        outline_from_dicom(nan, uid)
    assert "SR outline skipped" in caplog.text
    client, headers = _api(seeded, "radiologist")
    answer = client.post(f"/api/studies/{uid}/feedback/dicom", content=nan,
                         headers={**headers, "Content-Type": "application/dicom"})
    assert answer.status_code == 400
    assert seeded.audit.feedback(uid) == []
    assert client.get(f"/api/studies/{uid}").status_code == 200
