"""Our own writers' output for a study, before the models exist: `llnm.predict.predict_paths` with an
analysis that draws the nodule where we know it is (the phantom's truth mask, or a fixed ellipse on a
real file). The DICOM objects are exactly what `llnm predict` writes; only the numbers are made up."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llnm.config import Settings
from llnm.predict import predict_paths, write_output
from llnm.study import StudyInput, StudyResult, ViewResult

PROBABILITY = 0.7312
RISK_LEVEL = 3


@dataclass
class StudyOnDisk:
    study_uid: str
    inputs: list[Path]  # the ultrasound study as received
    outputs: list[Path]  # our SEG / SR / key images
    summary: dict
    #: source SOP Instance UID -> (row0, col0, row1, col1) of the nodule drawn on it, in source pixels
    nodule_boxes: dict[str, tuple[int, int, int, int]]


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _truth(truth_dir: Path | None, sop_uid: str, kind: str) -> np.ndarray | None:
    if truth_dir is None:
        return None
    path = truth_dir / "masks" / f"{sop_uid}_{kind}.png"
    return np.asarray(Image.open(path)) > 127 if path.is_file() else None


def no_nodule(study: StudyInput, backend: object) -> StudyResult:
    """An `analyse` for predict_paths that finds a gland and no nodule (the report still goes out)."""
    views = [ViewResult(nodule_mask=None, gland_mask=_ellipse(*v.image.shape, v.image.shape[0] * 0.5,
                                                              v.image.shape[1] * 0.5, v.image.shape[0] * 0.3,
                                                              v.image.shape[1] * 0.35)) for v in study.views]
    return StudyResult(study_uid=study.study_uid, finding="no nodule found", probability=None, risk_level=None,
                       views=views, calibrated=all(v.spacing_mm is not None for v in study.views),
                       model_versions={"nodule_seg": "viewer-test", "thyroid_seg": "viewer-test"})


def drawn(truth_dir: Path | None):
    """An `analyse` for predict_paths: truth masks when the phantom has them, else ellipses."""

    def analyse(study: StudyInput, backend: object) -> StudyResult:
        views = []
        for view in study.views:
            h, w = view.image.shape
            r0, c0 = view.crop_offset
            uid = getattr(view.source, "sop_instance_uid", "")
            nodule, gland = _truth(truth_dir, uid, "nodule"), _truth(truth_dir, uid, "gland")
            if nodule is not None and gland is not None:
                if nodule.shape != (h, w):  # truth drawn on the whole frame: crop it like the view
                    nodule, gland = nodule[r0:r0 + h, c0:c0 + w], gland[r0:r0 + h, c0:c0 + w]
            else:
                gland = _ellipse(h, w, h * 0.5, w * 0.5, h * 0.3, w * 0.35)
                nodule = _ellipse(h, w, h * 0.5, w * 0.42, h * 0.12, w * 0.12)
            views.append(ViewResult(nodule_mask=nodule, gland_mask=gland, nodule_score=0.9, used=True))
        calibrated = bool(study.views) and all(v.spacing_mm is not None for v in study.views)
        return StudyResult(
            study_uid=study.study_uid, finding="nodule", probability=PROBABILITY, risk_level=RISK_LEVEL,
            risk_probabilities=[0.1, 0.2, 0.7],
            contributions={"location": 0.45, "morphology": 0.35, "report": 0.15, "demographics": 0.05},
            views=views, index_view=0,
            capsule_distance_mm=1.25 if calibrated else None, capsule_distance_px=6.0,
            nodule_length_mm=11.5 if calibrated else None, nodule_width_mm=7.75 if calibrated else None,
            location={"vertical": "middle", "horizontal": "medial"}, calibrated=calibrated,
            model_versions={"nodule_seg": "viewer-test", "thyroid_seg": "viewer-test", "tmdl": "viewer-test"},
        )

    return analyse


def _boxes(study_dir: Path, out: list[Path]) -> dict[str, tuple[int, int, int, int]]:
    """Where the SEG says the nodule is (segment 1), per referenced source instance."""
    import pydicom

    boxes = {}
    for path in out:
        ds = pydicom.dcmread(path)
        if ds.Modality != "SEG":
            continue
        nodule = [int(s.SegmentNumber) for s in ds.SegmentSequence if "nodule" in str(s.SegmentLabel).lower()]
        if not nodule:
            continue
        pixels = ds.pixel_array.reshape((-1, ds.Rows, ds.Columns))
        shared = ds.SharedFunctionalGroupsSequence[0]
        for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
            ident = fg.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
            if int(ident[0].ReferencedSegmentNumber) != nodule[0]:
                continue
            src = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            rows, cols = np.nonzero(pixels[i])
            boxes[str(src)] = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    return boxes


def writer_output(inputs: list[Path], out_dir: Path, truth_dir: Path | None = None,
                  settings: Settings | None = None, nodule: bool = True) -> StudyOnDisk:
    settings = settings or Settings.from_env({}, data_dir=out_dir / "var")
    analyse = drawn(truth_dir) if nodule else no_nodule
    outputs = predict_paths(inputs, backend=None, settings=settings, analyse=analyse)  # type: ignore[arg-type]
    assert len(outputs) == 1, [o.study_uid for o in outputs]
    study_dir = write_output(outputs[0], out_dir)
    written = sorted(p for p in study_dir.glob("*.dcm"))
    return StudyOnDisk(outputs[0].study_uid, inputs, written, outputs[0].summary, _boxes(study_dir, written))


def phantom_study(out_dir: Path, seed: int = 7, rows: int = 360, cols: int = 480) -> tuple[list[Path], Path]:
    """One phantom study through the `llnm phantom` command; returns its files and its truth folder."""
    subprocess.run([sys.executable, "-m", "llnm", "phantom", "--out", str(out_dir), "--studies", "1",
                    "--seed", str(seed), "--rows", str(rows), "--cols", str(cols)], check=True,
                   capture_output=True, timeout=120)
    files = sorted(p for p in out_dir.glob("*/*.dcm"))
    return files, out_dir / "truth"


def llnm_predict(inputs: list[Path], out_dir: Path) -> StudyOnDisk:
    """The real command, with the trained models (the caller skips when they are missing)."""
    proc = subprocess.run([sys.executable, "-m", "llnm", "predict", *map(str, inputs), "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"llnm predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
    study_dirs = [p.parent for p in out_dir.glob("*/summary.json")]
    assert len(study_dirs) == 1, study_dirs
    written = sorted(study_dirs[0].glob("*.dcm"))
    summary = json.loads((study_dirs[0] / "summary.json").read_text())
    return StudyOnDisk(study_dirs[0].name, inputs, written, summary, _boxes(study_dirs[0], written))


def notice_output(inputs: list[Path], out_dir: Path, profile: str = "tid1500") -> StudyOnDisk:
    """The real no-usable-image path of predict_paths (no model, no analysis): the notice SR and key image
    of a study none of whose instances can be analysed, written as `llnm predict` writes them."""
    import dataclasses

    def analyse(study: StudyInput, backend: object) -> StudyResult:
        raise AssertionError("a study with no usable image reached the analysis")

    settings = dataclasses.replace(Settings.from_env({}, data_dir=out_dir / "var"), sr_profile=profile)
    outputs = predict_paths(inputs, backend=None, settings=settings, analyse=analyse)  # type: ignore[arg-type]
    assert len(outputs) == 1 and outputs[0].summary["status"] == "no usable image", outputs[0].summary
    study_dir = write_output(outputs[0], out_dir)
    written = sorted(study_dir.glob("*.dcm"))
    return StudyOnDisk(outputs[0].study_uid, inputs, written, outputs[0].summary, {})
