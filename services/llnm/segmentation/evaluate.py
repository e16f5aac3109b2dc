"""Dice and IoU of a shipped segmentation model on any folder of images and same-named masks.

Runs the runtime path (backend + numpy post-processing), so the figures are those of the product.
Masks: grey > 127 is foreground. For the nodule model the index nodule is compared with the mask
(a crop counts as a frame); no detection counts as an empty mask. Empty vs empty scores 1.
Over the images with a non-empty truth: `overlap_rate` is the share where the prediction touches the
truth, `detection_rate_iou50` the share where their IoU is at least 0.5 (a correct detection).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llnm.inference.backend import InferenceBackend
from llnm.segmentation.data import paired_files, read_grey, read_mask
from llnm.segmentation.gland import segment_gland
from llnm.segmentation.nodule import segment_nodule


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def predict_mask(backend: InferenceBackend, model: str, image: np.ndarray) -> np.ndarray:
    """The model's mask for one image on its own grid (all False when nothing is found)."""
    if model == "nodule":
        found = segment_nodule(backend, image)
        return np.zeros(image.shape, dtype=bool) if found is None else found.mask
    if model == "gland":
        mask = segment_gland(backend, image)
        return np.zeros(image.shape, dtype=bool) if mask is None else mask
    raise ValueError(f"unknown model {model!r}: expected 'nodule' or 'gland'")


def evaluate_folder(backend: InferenceBackend, model: str, images: Path, masks: Path) -> dict:
    """Mean Dice, mean IoU, the number of images and how many came out empty."""
    pairs = paired_files(images, masks)
    if not pairs:
        raise FileNotFoundError(f"no image in {images} has a same-named mask in {masks}")
    dices, ious, empty, found, hits, positives = [], [], 0, 0, 0, 0
    for image_path, mask_path in pairs:
        image, truth = read_grey(image_path), read_mask(mask_path)
        if truth.shape != image.shape:
            raise ValueError(f"{mask_path.name}: mask {truth.shape} does not match image {image.shape}")
        pred = predict_mask(backend, model, image)
        empty += not pred.any()
        dices.append(dice(pred, truth))
        ious.append(iou(pred, truth))
        if truth.any():
            positives += 1
            found += bool((pred & truth).any())
            hits += ious[-1] >= 0.5
    return {"model": model, "images": len(pairs), "mean_dice": float(np.mean(dices)),
            "mean_iou": float(np.mean(ious)), "median_dice": float(np.median(dices)), "empty_predictions": empty,
            "overlap_rate": found / positives if positives else None,
            "detection_rate_iou50": hits / positives if positives else None}
