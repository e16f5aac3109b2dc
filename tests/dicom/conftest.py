"""Shared fixtures of the DICOM tests: real ultrasound files, synthetic ones, a stand-in analyser
(masks drawn at known places, so writers are tested without the models) and dciodvfy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from llnm.study import StudyInput, StudyResult, ViewResult

#: Real ultrasound files that ship in pydicom (first three) and in pydicom-data.
PYDICOM_FILES = ["examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_palette.dcm"]
PYDICOM_DATA_FILES = [
    "US1_J2KI.dcm", "US1_J2KR.dcm", "US1_UNCI.dcm", "US1_UNCR.dcm", "color3d_jpeg_baseline.dcm",
    "gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm",
    "OBXXXX1A_rle.dcm", "OBXXXX1A_rle_2frame.dcm", "color-pl.dcm", "color-px.dcm",
]
#: Of those, the ones that hold a B-mode frame we must analyse (the others are colour/power Doppler).
BMODE_FILES = {
    "examples_ybr_color.dcm", "examples_palette.dcm", "color3d_jpeg_baseline.dcm", "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "OBXXXX1A.dcm",
    "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle.dcm",
    "OBXXXX1A_rle_2frame.dcm",
}


def real_file(name: str) -> Path:
    if name in PYDICOM_FILES:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name, download=False)
    else:
        data_store = pytest.importorskip("data_store", reason="pydicom-data not installed")
        path = Path(data_store.__file__).parent / "data" / name
    if path is None or not Path(path).is_file():
        pytest.skip(f"{name} not available")
    return Path(path)


ALL_REAL = PYDICOM_FILES + PYDICOM_DATA_FILES


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(Error lines, Warning lines) of dciodvfy on one file; a missing dciodvfy fails in CI, skips elsewhere.
    A non-zero exit without an Error line counts as an error (with the output's last lines)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dciodvfy is not installed (scripts/test-services.sh installs dicom3tools)")
        pytest.skip("dciodvfy not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if proc.returncode != 0 and not errors:
        errors = [f"dciodvfy exit {proc.returncode}"] + lines[-5:]
    return errors, [line for line in lines if line.startswith("Warning")]


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dciodvfy on one file (skips when dciodvfy is absent, except in CI)."""
    return dciodvfy(path)[0]


def drawn_result(study: StudyInput, probability: float = 0.7312345, risk_level: int = 3,
                 nodule: bool = True) -> StudyResult:
    """A StudyResult as the pipeline would give, with an ellipse gland and a nodule inside it."""
    views = []
    for view in study.views:
        h, w = view.image.shape
        yy, xx = np.mgrid[:h, :w]
        gland = ((yy - h / 2) / (h * 0.3)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1
        nod = ((yy - h / 2) / (h * 0.1)) ** 2 + ((xx - w * 0.4) / (w * 0.12)) ** 2 <= 1
        heat = np.exp(-(((yy - h / 2) / (h * 0.2)) ** 2 + ((xx - w / 2) / (w * 0.2)) ** 2)).astype(np.float32)
        views.append(ViewResult(nodule_mask=nod if nodule else None, gland_mask=gland,
                                nodule_score=0.9 if nodule else 0.0, heatmap=heat, used=nodule))
    calibrated = bool(study.views) and all(v.spacing_mm is not None for v in study.views)
    return StudyResult(
        study_uid=study.study_uid, finding="nodule" if nodule else "no nodule found",
        probability=probability if nodule else None, risk_level=risk_level if nodule else None,
        risk_probabilities=[0.1, 0.3, 0.6] if nodule else [],
        contributions={"location": 0.488, "report": 0.197, "morphology": 0.299, "demographics": 0.016}
        if nodule else {},
        views=views, index_view=0 if nodule else None,
        capsule_distance_mm=1.8345 if calibrated and nodule else None,
        capsule_distance_px=7.25 if nodule else None,
        nodule_length_mm=12.5 if calibrated and nodule else None,
        nodule_width_mm=8.25 if calibrated and nodule else None,
        location={"vertical": "upper", "horizontal": "medial"} if nodule else {},
        calibrated=calibrated, warnings=[],
        model_versions={"nodule_seg": "aa11", "thyroid_seg": "bb22", "text_encoder": "cc33", "tmdl": "dd44"},
    )


def drawn_analyse(study, backend):
    return drawn_result(study)


OUTSIDE_TEXT = "only 10% of the nodule lies inside the gland found: the masks disagree"


def declined_quality(code: str = "nodule_outside_gland", text: str = OUTSIDE_TEXT):
    from llnm.quality import Reason, ViewQuality

    return ViewQuality(reasons=(Reason(code, text),), nodule_inside_gland=0.1, nodule_area_share=0.0234,
                       gland_area_share=0.3312, solidity=0.9712)


def declined_result(study: StudyInput, keep_numbers: bool = False) -> StudyResult:
    """The pipeline's "not assessable" answer: every view declined by the quality gate (nodule outside
    the gland), masks and heat maps still on the views. `keep_numbers`: a careless result that also kept
    the numbers of drawn_result, which no writer may let through either."""
    import dataclasses

    result = drawn_result(study)
    for view in result.views:
        view.used = False
        view.quality = declined_quality()
    if not keep_numbers:
        result = dataclasses.replace(
            result, probability=None, risk_level=None, risk_probabilities=[], contributions={}, index_view=None,
            capsule_distance_mm=None, capsule_distance_px=None, nodule_length_mm=None, nodule_width_mm=None,
            location={})
    return dataclasses.replace(result, finding=f"not assessable: {OUTSIDE_TEXT}",
                               warnings=[f"view {i} not used: {OUTSIDE_TEXT}" for i in range(1, len(study.views) + 1)],
                               not_assessable_code="nodule_outside_gland", not_assessable_reason=OUTSIDE_TEXT)


def make_us(path: Path, *, rows: int = 120, cols: int = 160, frames: int = 1, study_uid: str | None = None,
            regions: list[dict] | None = None, pixel: np.ndarray | None = None, modality: str = "US",
            sop_class: str | None = None, **attrs) -> Dataset:
    """A synthetic MONOCHROME2 ultrasound instance (explicit VR little endian), saved to `path`."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    if pixel is None:
        shape = (frames, rows, cols) if frames > 1 else (rows, cols)
        pixel = rng.integers(20, 200, size=shape, dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    multi = pixel.ndim == 3  # (frames, rows, columns)
    ds.SOPClassUID = sop_class or ("1.2.840.10008.5.1.4.1.1.3.1" if multi else "1.2.840.10008.5.1.4.1.1.6.1")
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "P1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20250101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "A1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Test"
    ds.Rows, ds.Columns = pixel.shape[-2], pixel.shape[-1]
    if multi:
        ds.NumberOfFrames = pixel.shape[0]
        ds.FrameTime = 33.3
        ds.FrameIncrementPointer = (0x0018, 0x1063)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelData = pixel.tobytes()
    if regions:
        items = []
        for r in regions:
            item = Dataset()
            item.RegionSpatialFormat = r.get("format", 1)
            item.RegionDataType = r.get("type", 1)
            item.RegionFlags = 0
            item.RegionLocationMinX0, item.RegionLocationMinY0 = r["x0"], r["y0"]
            item.RegionLocationMaxX1, item.RegionLocationMaxY1 = r["x1"], r["y1"]
            item.PhysicalUnitsXDirection = r.get("units", 3)
            item.PhysicalUnitsYDirection = r.get("units", 3)
            item.PhysicalDeltaX = r.get("dx", 0.01)
            item.PhysicalDeltaY = r.get("dy", 0.01)
            items.append(item)
        ds.SequenceOfUltrasoundRegions = items
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture
def us_factory(tmp_path):
    def factory(name: str = "us.dcm", **kwargs) -> Dataset:
        return make_us(tmp_path / name, **kwargs)

    return factory


@pytest.fixture
def settings(tmp_path):
    from llnm.config import Settings

    return Settings.from_env(environ={}, data_dir=tmp_path / "var")


def read(path: Path) -> Dataset:
    return pydicom.dcmread(str(path))
