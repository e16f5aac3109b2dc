"""Dice and IoU of the shipped segmentation models on any folder of images and same-named masks.

Runs the runtime path (backend + numpy post-processing), so the figures are those of the product:
the ultrasound image is found in each picture first (llnm.segmentation.region, as for a frame
without DICOM regions), both models run on it, the masks are placed back on the whole picture, and
the quality gate (llnm.quality) judges the view. Masks: grey > 127 is foreground. For the nodule
model the index nodule (the product reports one nodule per view) is compared with the outlined
nodule it overlaps most, when a picture has several (`dice_all` compares it with all of them); a crop
counts as a frame; no detection counts as an empty mask. Empty vs empty scores 1.

Over the images with a non-empty truth: `overlap_rate` is the share where the prediction touches the
truth, `detection_rate_iou50` the share where their IoU is at least 0.5 (a correct detection),
`dice_of_detected` the mean Dice over those correct detections. With `nodule_masks` (gland model),
`nodule_inside_gland_median` is the median share of each true nodule covered by the predicted gland:
every nodule lies inside the thyroid, so on whole frames without gland outlines this is the gland
model's measure. `gate_declined` is the share of pictures the quality gate would not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llnm.inference.backend import InferenceBackend
from llnm.quality import PRIORITY, ViewQuality, assess_view
from llnm.segmentation.data import paired_files, read_grey, read_mask
from llnm.segmentation.gland import segment_gland
from llnm.segmentation.nodule import segment_nodule
from llnm.segmentation.region import find_image_region


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


@dataclass
class FrameSegmentation:
    """Both models' output on one picture, on the picture's own grid, and the gate's verdict."""

    nodule: np.ndarray  # bool (all False when nothing was found)
    nodule_score: float
    gland: np.ndarray  # bool
    quality: ViewQuality  # the gate's measurements and reasons (empty: the gate would use this view)

    @property
    def gate_reasons(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.quality.reasons)


def segment_picture(backend: InferenceBackend, image: np.ndarray, region: bool = True) -> FrameSegmentation:
    """The product's path for a frame without DICOM regions: find the image, segment, gate, paste back."""
    found = find_image_region(image) if region else None
    view = found.crop(image) if found is not None else image
    detection = segment_nodule(backend, view)
    gland = segment_gland(backend, view)
    nodule = np.zeros(view.shape, dtype=bool) if detection is None else detection.mask
    score = 0.0 if detection is None else float(detection.score)
    gland = np.zeros(view.shape, dtype=bool) if gland is None else gland
    quality = assess_view(view, nodule if nodule.any() else None, gland if gland.any() else None, score, None)
    if found is not None:
        nodule, gland = found.paste(nodule, image.shape), found.paste(gland, image.shape)
    return FrameSegmentation(nodule, score, gland, quality)


def predict_mask(backend: InferenceBackend, model: str, image: np.ndarray, region: bool = True) -> np.ndarray:
    """The model's mask for one image on its own grid (all False when nothing is found)."""
    if model not in ("nodule", "gland"):
        raise ValueError(f"unknown model {model!r}: expected 'nodule' or 'gland'")
    seg = segment_picture(backend, image, region)
    return seg.nodule if model == "nodule" else seg.gland


def matched_nodule(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The outlined nodule (connected component of `truth`) that `pred` overlaps most; all of `truth`
    when it has one component or none overlaps."""
    from scipy import ndimage

    labels, count = ndimage.label(truth, structure=np.ones((3, 3), dtype=bool))
    if count <= 1 or not pred.any():
        return truth
    overlaps = np.bincount(labels[pred].ravel(), minlength=count + 1)[1:]
    if not overlaps.any():
        return truth
    return labels == int(np.argmax(overlaps)) + 1


def evaluate_pairs(backend: InferenceBackend, model: str, pairs: list[tuple[Path, Path]],
                   nodule_masks: Path | None = None, region: bool = True) -> list[dict]:
    """One record per picture (`evaluate_image`) of (image, mask) files."""
    if model not in ("nodule", "gland"):
        raise ValueError(f"unknown model {model!r}: expected 'nodule' or 'gland'")
    records = []
    for image_path, mask_path in pairs:
        image, truth = read_grey(image_path), read_mask(mask_path)
        if truth.shape != image.shape:
            raise ValueError(f"{mask_path.name}: mask {truth.shape} does not match image {image.shape}")
        nodule_truth = None
        if model == "gland" and nodule_masks is not None:
            candidates = [p for p in Path(nodule_masks).glob(f"{image_path.stem}.*")]
            nodule_truth = read_mask(candidates[0]) if candidates else None
        records.append(evaluate_image(backend, model, image_path.stem, image, truth, nodule_truth, region))
    return records


def evaluate_image(backend: InferenceBackend, model: str, name: str, image: np.ndarray, truth: np.ndarray,
                   nodule_truth: np.ndarray | None = None, region: bool = True) -> dict:
    """One picture through the product's path against its outline: dice, iou, empty, truth_empty, gate
    reasons, and the share of the true nodule inside the predicted gland (`truth` itself for the
    nodule model; `nodule_truth` for the gland model, when given)."""
    seg = segment_picture(backend, image, region)
    pred = seg.nodule if model == "nodule" else seg.gland
    target = matched_nodule(pred, truth) if model == "nodule" else truth
    record = {"name": name, "dice": dice(pred, target), "iou": iou(pred, target),
              "dice_all": dice(pred, truth),
              "empty": not pred.any(), "truth_empty": not truth.any(), "score": seg.nodule_score,
              "gate": list(seg.gate_reasons), "nodule_inside_gland": None}
    if model == "nodule":
        nodule_truth = truth
    if nodule_truth is not None and nodule_truth.any():
        record["nodule_inside_gland"] = float((seg.gland & nodule_truth).sum() / nodule_truth.sum())
    return record


def summarise(model: str, records: list[dict]) -> dict:
    """The figures of a list of per-picture records (see the module docstring)."""
    dices = np.array([r["dice"] for r in records])
    ious = np.array([r["iou"] for r in records])
    positives = [r for r in records if not r["truth_empty"]]
    hits = [r for r in positives if r["iou"] >= 0.5]
    inside = [r["nodule_inside_gland"] for r in records if r["nodule_inside_gland"] is not None]
    declined = [r for r in records if r["gate"]]
    reasons: dict[str, int] = {}
    for r in declined:
        code = min(r["gate"], key=PRIORITY.index)  # the most telling reason (llnm.quality.main_reason)
        reasons[code] = reasons.get(code, 0) + 1
    return {
        "model": model, "images": len(records), "mean_dice": float(dices.mean()), "mean_iou": float(ious.mean()),
        "median_dice": float(np.median(dices)), "empty_predictions": int(sum(r["empty"] for r in records)),
        "overlap_rate": (sum(not r["empty"] and r["dice"] > 0 for r in positives) / len(positives)
                         if positives else None),
        "detection_rate_iou50": len(hits) / len(positives) if positives else None,
        "dice_of_detected": float(np.mean([r["dice"] for r in hits])) if hits else None,
        "nodule_inside_gland_median": float(np.median(inside)) if inside else None,
        "nodule_inside_gland_mean": float(np.mean(inside)) if inside else None,
        "gate_declined": len(declined) / len(records) if records else None,
        "gate_reasons": dict(sorted(reasons.items())),
    }


def evaluate_folder(backend: InferenceBackend, model: str, images: Path, masks: Path,
                    nodule_masks: Path | None = None, region: bool = True) -> dict:
    """The figures of `summarise` over every image of a folder with a same-named mask."""
    pairs = paired_files(images, masks)
    if not pairs:
        raise FileNotFoundError(f"no image in {images} has a same-named mask in {masks}")
    return summarise(model, evaluate_pairs(backend, model, pairs, nodule_masks, region))
