"""Real whole frames wrapped as DICOM, through the product's `llnm predict` path, against their outlines.

    .venv/bin/python bench/predict_frames.py --data ../shared/data --split val --out runs/predict-frames [--marks calipers text]

Each ddti_frames frame of the split becomes a one-view study (US Image Storage, RGB, the frame exactly
as published), twice: WITHOUT SequenceOfUltrasoundRegions (the product finds the ultrasound image in
the pixels) and WITH one calibrated B-mode region (bounds as the scanner would write them: the
image's rectangle; a nominal 0.1 mm per pixel, since DDTI publishes no calibration). Every study goes
through `llnm.predict.predict_study` (what `llnm predict` runs per study); the masks of the view are
placed back on the frame and compared with the outline. Reported per variant, with 95 % CIs by
bootstrap over cases: nodule Dice, share with IoU >= 0.5, nodule inside the predicted gland (median),
the share of studies the quality gate declined ("not assessable") and their reasons. With --marks,
one more variant per kind burns those marks into every frame (the sonographer's calipers, text over
the tissue: `segmentation_devices.MARKS`; without regions) and compares each study's P(LLNM) with the
unchanged frame's: the marks must change neither the masks nor the answer. With --scale every frame
is resized first (bilinear; the outline nearest), as a device with another matrix would send it
(the region's calibration scaled with it: the same tissue over more or fewer pixels).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segmentation_devices import MARKS, rescale  # noqa: E402
from segmentation_frames import bootstrap_by_case  # noqa: E402

from llnm.config import Settings  # noqa: E402
from llnm.dicom.loading import group_by_study  # noqa: E402
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from llnm.predict import predict_study  # noqa: E402
from llnm.segmentation.data import ddti_frame_pairs, read_mask  # noqa: E402
from llnm.segmentation.evaluate import dice, iou, matched_nodule  # noqa: E402
from llnm.segmentation.region import find_image_region  # noqa: E402

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def us_dataset(rgb: np.ndarray, region: tuple[int, int, int, int] | None, spacing_cm: float = 0.01) -> Dataset:
    """A single-frame RGB US image; `region` (row0, col0, row1, col1) adds one calibrated B-mode region."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "US", "BENCH", "Bench^Frame"
    ds.PatientBirthDate = ds.PatientSex = ds.AccessionNumber = ds.StudyID = ds.ReferringPhysicianName = ""
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", 1, 1
    ds.Manufacturer = "bench"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    if region is not None:
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = 1, 1, 0
        item.RegionLocationMinY0, item.RegionLocationMinX0 = region[0], region[1]
        item.RegionLocationMaxY1, item.RegionLocationMaxX1 = region[2] - 1, region[3] - 1
        item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
        item.PhysicalDeltaX = item.PhysicalDeltaY = spacing_cm
        item.ReferencePixelX0 = item.ReferencePixelY0 = 0
        ds.SequenceOfUltrasoundRegions = [item]
    return ds


def run_variant(pairs, backend, settings, with_regions: bool, folder: Path, marks: str | None = None,
                scale: float = 1.0) -> list[dict]:
    from PIL import Image

    records = []
    for image_path, mask_path in pairs:
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        truth = read_mask(mask_path)
        if scale != 1.0:  # a device with a larger or smaller matrix
            rgb, truth = rescale(rgb, truth, scale)
        if marks:
            grey = rgb.mean(axis=2).astype(np.uint8)
            drawn = MARKS[marks](grey, truth)
            rgb = rgb.copy()
            rgb[drawn != grey] = drawn[drawn != grey, None]
        region = None
        if with_regions:
            found = find_image_region(rgb.mean(axis=2).astype(np.uint8))
            region = (found.row0, found.col0, found.row1, found.col1)
        path = folder / f"{image_path.stem}-{'r' if with_regions else 'n'}.dcm"
        us_dataset(rgb, region, 0.01 / scale).save_as(path, enforce_file_format=True)  # the same tissue, finer pixels
        groups, _ = group_by_study([path])
        (files,) = groups.values()
        output = predict_study(files, backend, settings)
        result = output.result
        nodule = np.zeros(truth.shape, bool)
        gland = np.zeros(truth.shape, bool)
        used = gate_passed = False
        finding = output.summary.get("finding")
        if result is not None and result.views:
            vr = result.views[0]
            r0, c0 = output.summary["views"][0]["crop_offset"]
            h, w = output.summary["views"][0]["shape"]
            if vr.nodule_mask is not None:
                nodule[r0:r0 + h, c0:c0 + w] = vr.nodule_mask
            if vr.gland_mask is not None:
                gland[r0:r0 + h, c0:c0 + w] = vr.gland_mask
            used = bool(getattr(vr, "used", False))
            gate_passed = bool(vr.quality is not None and vr.quality.passed)
        target = matched_nodule(nodule, truth)
        records.append({
            "name": image_path.stem, "dice": dice(nodule, target), "iou": iou(nodule, target),
            "truth_empty": not truth.any(), "empty": not nodule.any(), "used": used, "gate_passed": gate_passed,
            "gate": [] if used else [str((result.not_assessable_code or result.finding) if result else "no view")],
            "finding": finding,
            "nodule_inside_gland": float((gland & truth).sum() / truth.sum()) if truth.any() else None,
            "objects": len(output.datasets),
            "probability": None if result is None else result.probability,
        })
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--split", choices=["val", "select"], default="val")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("runs/predict-frames"))
    parser.add_argument("--scale", type=float, default=1.0, help="resize every frame first (another matrix size)")
    parser.add_argument("--marks", nargs="*", default=[], choices=sorted(MARKS),
                        help="one more variant per kind, with these marks burned in (calipers, text)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = ddti_frame_pairs(args.data / "ddti_frames", (args.split,))
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    settings = Settings.from_env(model_repository=args.repo, key_images=False)
    table, unchanged = {}, None
    variants = [("without US regions", False, None, "noregions"), ("with US regions", True, None, "regions")]
    variants += [(f"{kind} burned in, without US regions", False, kind, kind) for kind in args.marks]
    for label, with_regions, marks, tag in variants:
        with tempfile.TemporaryDirectory() as tmp:
            records = run_variant(pairs, backend, settings, with_regions, Path(tmp), marks, args.scale)
        unchanged = unchanged or records
        (args.out / f"{args.split}-{tag}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
        row = {"studies": len(records)}
        stats = {
            "nodule_dice": lambda rs: float(np.mean([r["dice"] for r in rs])),
            "iou50_rate": lambda rs: float(np.mean([r["iou"] >= 0.5 for r in rs if not r["truth_empty"]])),
            "nodule_inside_gland_median": lambda rs: float(np.median(
                [r["nodule_inside_gland"] for r in rs if r["nodule_inside_gland"] is not None])),
            "gate_declined": lambda rs: float(np.mean([not r["gate_passed"] for r in rs])),
            "ood_declined_of_gate_passed": lambda rs: (float(np.mean([not r["used"] for r in rs if r["gate_passed"]]))
                                                       if any(r["gate_passed"] for r in rs) else None),
            "not_assessable": lambda rs: float(np.mean([not r["used"] for r in rs])),
            "nodule_dice_of_gate_passed": lambda rs: (float(np.mean([r["dice"] for r in rs if r["gate_passed"]]))
                                                      if any(r["gate_passed"] for r in rs) else None),
        }
        for name, stat in stats.items():
            row[name] = [None if v is None else round(v, 3) for v in bootstrap_by_case(records, stat)]
        reasons: dict[str, int] = {}
        for r in records:
            if not r["used"]:
                reasons[r["gate"][0]] = reasons.get(r["gate"][0], 0) + 1
        row["reasons"] = reasons
        both = [(r["probability"], q["probability"]) for r, q in zip(records, unchanged)
                if r["probability"] is not None and q["probability"] is not None]
        if marks and both:
            change = np.abs(np.subtract(*zip(*both)))
            row["probability_change_vs_unchanged"] = {"studies": len(both), "median": round(float(np.median(change)), 4),
                                                      "max": round(float(change.max()), 4)}
        table[label] = row
        print(json.dumps({label: row}), flush=True)
    (args.out / f"summary-{args.split}.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
