"""Writing a phantom study as DICOM: two US Image Storage instances and a Basic Text SR report.

Both views share ONE image series (SeriesNumber 1, InstanceNumber 1 = transverse, 2 = longitudinal);
the report is its own SR series (SeriesNumber 2). Explicit VR Little Endian, 8-bit MONOCHROME2 (or
RGB with grey content), one calibrated B-mode region in SequenceOfUltrasoundRegions. Every value is
derived from (seed, index), so the same seed writes byte-identical files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom import Dataset, FileMetaDataset, Sequence, dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from .frame import compose_frame
from .study import PhantomStudy, PhantomView

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
MANUFACTURER = "LLNM phantom"
SOFTWARE_VERSION = "llnm-phantom 1"


def study_datetime(study: PhantomStudy) -> dt.datetime:
    """A fixed, seed-derived acquisition time (no wall clock: outputs stay byte-identical)."""
    base = dt.datetime(2024, 1, 1, 8, 0, 0)
    return base + dt.timedelta(days=(study.seed * 37 + study.index) % 700, minutes=(study.index * 17) % 540)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _common(study: PhantomStudy, sop_class: str, sop_uid: str, when: dt.datetime) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.StudyDate, ds.StudyTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.AccessionNumber = f"PHA{study.index + 1:06d}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "US THYROID"
    ds.StudyID = f"{study.index + 1}"
    ds.StudyInstanceUID = study.study_uid
    ds.PatientName = f"PHANTOM^{study.index + 1:04d}"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no real patient"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.InstitutionName = "LLNM phantom"
    return ds


def us_image_dataset(study: PhantomStudy, view: PhantomView, number: int, rgb: bool) -> Dataset:
    when = study_datetime(study)
    ds = _common(study, US_IMAGE_STORAGE, view.sop_instance_uid, when)
    ds.Modality = "US"
    ds.SeriesInstanceUID = study.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Thyroid B-mode"
    ds.SeriesDate, ds.SeriesTime = ds.StudyDate, ds.StudyTime
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.BodyPartExamined = "THYROID"
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    ds.ImageComments = f"{study.findings.side.upper()} LOBE {view.name.upper()}"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SMALL PARTS", "0001"]
    frame = compose_frame(study, view)
    rows, cols = frame.shape
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if rgb:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.PixelData = np.repeat(frame[:, :, None], 3, axis=2).tobytes()
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = frame.tobytes()
    x0, y0, x1, y1 = view.region
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = view.spacing_mm[1] / 10.0
    region.PhysicalDeltaY = view.spacing_mm[0] / 10.0
    region.ReferencePixelX0 = (x1 - x0) // 2
    region.ReferencePixelY0 = 0
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.TransducerFrequency = 12000
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


def report_sr_dataset(study: PhantomStudy) -> Dataset:
    """Basic Text SR: root CONTAINER "Diagnostic Imaging Report" holding a Findings CONTAINER with one
    TEXT "Finding" and an Impressions CONTAINER with one TEXT "Impression" (left out when the report has
    no impression)."""
    when = study_datetime(study) + dt.timedelta(minutes=20)
    ds = _common(study, BASIC_TEXT_SR, study.sr_sop_instance_uid, when)
    ds.StudyDate, ds.StudyTime = study_datetime(study).strftime("%Y%m%d"), study_datetime(study).strftime("%H%M%S")
    ds.Modality = "SR"
    ds.SeriesInstanceUID = study.sr_series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Radiology report"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2000"
    ds.ContentTemplateSequence = Sequence([template])

    def section(code: tuple[str, str, str], item_code: tuple[str, str, str], text: str) -> Dataset:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = Sequence([_code(*item_code)])
        item.TextValue = text
        container = Dataset()
        container.RelationshipType = "CONTAINS"
        container.ValueType = "CONTAINER"
        container.ConceptNameCodeSequence = Sequence([_code(*code)])
        container.ContinuityOfContent = "SEPARATE"
        container.ContentSequence = Sequence([item])
        return container

    sections = [section(("121070", "DCM", "Findings"), ("121071", "DCM", "Finding"), study.report.findings)]
    if study.report.impression:  # a fusion-profile report may have none
        sections.append(section(("121072", "DCM", "Impressions"), ("121073", "DCM", "Impression"),
                                study.report.impression))
    ds.ContentSequence = Sequence(sections)
    return ds


def write_study_dicom(study: PhantomStudy, study_dir: Path, rgb_views: set[int] | None = None) -> list[Path]:
    """Write US_1.dcm, US_2.dcm (views in order) and SR_report.dcm into study_dir."""
    study_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, view in enumerate(study.views, start=1):
        path = study_dir / f"US_{k}.dcm"
        dcmwrite(path, us_image_dataset(study, view, k, rgb=k in (rgb_views or set())), enforce_file_format=True)
        paths.append(path)
    path = study_dir / "SR_report.dcm"
    dcmwrite(path, report_sr_dataset(study), enforce_file_format=True)
    paths.append(path)
    return paths

