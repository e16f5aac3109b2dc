"""Real US files and result objects made with highdicom, to prove the viewer environment on its own
(independent of `llnm predict`) and to build the broken SEG variants the viewer contract forbids."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

#: single-frame real US with a calibrated B-mode region (0.0262 cm per pixel)
REAL_US = "examples_palette.dcm"


def real_us() -> Dataset:
    path = get_testdata_file(REAL_US, download=False)
    assert path, f"pydicom test file {REAL_US} missing"
    return pydicom.dcmread(path)


def region_spacing_mm(image: Dataset) -> tuple[float, float]:
    """Row and column spacing in mm of the first 2D tissue region (cm in the file)."""
    for r in image.SequenceOfUltrasoundRegions:
        if r.RegionSpatialFormat == 1 and r.PhysicalUnitsXDirection == 3 and r.PhysicalUnitsYDirection == 3:
            return float(r.PhysicalDeltaY) * 10.0, float(r.PhysicalDeltaX) * 10.0
    raise ValueError("no calibrated 2D region")


def ellipse_mask(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[: shape[0], : shape[1]]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def ellipse_contour(cy: float, cx: float, ry: float, rx: float, n: int = 48) -> np.ndarray:
    """Closed polyline (column, row) around the ellipse, first point repeated last."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    return np.vstack([pts, pts[:1]]).astype(np.float32)


def _algorithm() -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name="llnm-viewer-test", version="0", family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing")
    )


def make_seg(image: Dataset, nodule: np.ndarray, gland: np.ndarray) -> Dataset:
    """SEG (nodule + gland) on a single-frame US, with the viewer's PixelMeasures and PlaneOrientation."""
    seg_type = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1, segment_label="Nodule", segmented_property_category=seg_type,
            segmented_property_type=hd.sr.CodedConcept("237495005", "SCT", "Thyroid nodule"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=_algorithm(),
        ),
        hd.seg.SegmentDescription(
            segment_number=2, segment_label="Thyroid gland",
            segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
            segmented_property_type=hd.sr.CodedConcept("69748006", "SCT", "Thyroid"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=_algorithm(),
        ),
    ]
    pixels = np.stack([nodule, gland], axis=-1)[None].astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=[image], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="LLNM test",
        manufacturer_model_name="viewer-test", software_versions="0", device_serial_number="0",
        series_description="LLNM segmentation (test)",
    )
    row_mm, col_mm = region_spacing_mm(image)
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = Dataset()
    measures.PixelSpacing = [f"{row_mm:.10g}", f"{col_mm:.10g}"]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = ""
    return seg


def without(seg: Dataset, keyword: str) -> Dataset:
    """A copy of the SEG that lost one functional group (what the viewer contract forbids), new UIDs."""
    broken = copy.deepcopy(seg)
    for fg in [broken.SharedFunctionalGroupsSequence[0], *broken.PerFrameFunctionalGroupsSequence]:
        if keyword in fg:
            delattr(fg, keyword)
    broken.SOPInstanceUID = generate_uid()
    broken.SeriesInstanceUID = generate_uid()
    broken.file_meta.MediaStorageSOPInstanceUID = broken.SOPInstanceUID
    broken.SeriesDescription = f"SEG without {keyword}"
    return broken


def make_sr(image: Dataset, contour: np.ndarray, probability: float, long_mm: float, capsule_mm: float) -> Dataset:
    """A plain TID 1500 SR (highdicom defaults): one planar ROI with NUMs, the way a careful writer makes it."""
    src = hd.sr.SourceImageForRegion(image.SOPClassUID, image.SOPInstanceUID)
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=contour, source_image=src)
    ucum = "UCUM"
    measurements = [
        hd.sr.Measurement(name=hd.sr.CodedConcept("LLNM-P", "99LLNM", "LLNM probability"), value=probability * 100,
                          unit=hd.sr.CodedConcept("%", ucum, "percent")),
        hd.sr.Measurement(name=hd.sr.CodedConcept("103339001", "SCT", "Long Axis"), value=long_mm,
                          unit=hd.sr.CodedConcept("mm", ucum, "millimeter")),
        hd.sr.Measurement(name=hd.sr.CodedConcept("LLNM-CD", "99LLNM", "Capsule distance"), value=capsule_mm,
                          unit=hd.sr.CodedConcept("mm", ucum, "millimeter")),
    ]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Nodule 1: high LLNM risk"),
        referenced_region=region,
        finding_type=hd.sr.CodedConcept("237495005", "SCT", "Thyroid nodule"),
        finding_sites=[hd.sr.FindingSite(hd.sr.CodedConcept("69748006", "SCT", "Thyroid"))],
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=hd.sr.CodedConcept("LLNM-R", "99LLNM", "LLNM risk level"),
            value=hd.sr.CodedConcept("LLNM-H", "99LLNM", "High"))],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(),
                                                                                          name="llnm-viewer-test"),
            )
        ),
        procedure_reported=hd.sr.CodedConcept("16310003", "SCT", "Ultrasonography of thyroid"),
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[image], content=report[0], series_instance_uid=generate_uid(), series_number=902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="LLNM test",
        series_description="LLNM result (test)",
    )


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


#: Enhanced US Volume: an ultrasound SOP class the worker does not analyse (docs/dicom-conformance.md 1.1)
ENHANCED_US_VOLUME = "1.2.840.10008.5.1.4.1.1.6.2"


def relabelled(name: str, sop_class: str, path: Path) -> Path:
    """A real pydicom US file as an instance of another SOP class, in a study of its own (new UIDs)."""
    source = get_testdata_file(name, download=False)
    assert source, f"pydicom test file {name} missing"
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return write(ds, path)
