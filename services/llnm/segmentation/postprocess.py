"""Numpy post-processing of the segmentation models' raw outputs (no torch at run time).

YOLOv8-seg (Ultralytics ONNX export) gives two arrays:
- `output0` (1, 4 + nc + nm, N): per anchor, box centre/size (model pixels), nc class scores
  (already sigmoid) and nm mask coefficients;
- `output1` (1, nm, mh, mw): mask prototypes at a quarter of the input resolution.
An instance mask is sigmoid(coefficients @ prototypes), upsampled to the input grid and cut to its box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from llnm.segmentation.morphology import disc_opening


@dataclass
class Detections:
    """Instances on the model grid, sorted by descending score."""

    boxes: np.ndarray  # (k, 4) float32 x0, y0, x1, y1 in model pixels
    scores: np.ndarray  # (k,) float32
    coefficients: np.ndarray  # (k, nm) float32

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def subset(self, keep: np.ndarray) -> "Detections":
        """The instances where the boolean `keep` is true, order kept."""
        return Detections(self.boxes[keep], self.scores[keep], self.coefficients[keep])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) xyxy box with each of (n, 4) boxes."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo_seg(output0: np.ndarray, num_masks: int, conf_threshold: float,
                    iou_threshold: float, max_detections: int = 20) -> Detections:
    """Boxes, scores and mask coefficients of one image from YOLOv8-seg `output0` (all classes merged)."""
    pred = np.asarray(output0, dtype=np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    num_classes = pred.shape[0] - 4 - num_masks
    if num_classes < 1:
        raise ValueError(f"output0 has {pred.shape[0]} rows; expected 4 + classes + {num_masks}")
    pred = pred.T  # (N, 4 + nc + nm)
    scores = pred[:, 4:4 + num_classes].max(axis=1)
    chosen = scores >= conf_threshold
    pred, scores = pred[chosen], scores[chosen]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    keep = nms(boxes, scores, iou_threshold)[:max_detections]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32),
                      pred[keep, 4 + num_classes:].astype(np.float32))


def assemble_mask(coefficients: np.ndarray, protos: np.ndarray, box: np.ndarray, size: int,
                  margin: float = 0.0) -> np.ndarray:
    """Probability map (size x size) of one instance: prototypes mixed, upsampled, cut to its box.

    `margin` widens the box on each side by that share of its width/height before the cut, so a
    slightly small box does not leave a straight edge through the nodule."""
    protos = np.asarray(protos, dtype=np.float32)
    if protos.ndim == 4:
        protos = protos[0]
    nm, mh, mw = protos.shape
    logits = (coefficients.reshape(1, nm) @ protos.reshape(nm, mh * mw)).reshape(mh, mw)
    upsampled = np.asarray(Image.fromarray(logits.astype(np.float32)).resize((size, size), Image.BILINEAR))
    prob = sigmoid(upsampled)
    box = np.asarray(box, dtype=np.float32)
    if margin:
        dx, dy = (box[2] - box[0]) * margin, (box[3] - box[1]) * margin
        box = box + np.array([-dx, -dy, dx, dy], dtype=np.float32)
    x0, y0, x1, y1 = (int(round(float(v))) for v in np.clip(box, 0, size))
    cut = np.zeros_like(prob)
    cut[y0:y1, x0:x1] = prob[y0:y1, x0:x1]
    return cut


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (all False stays all False)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def open_mask(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Morphological opening of a bool mask with a disc of radius `fraction` x the mask's equivalent
    radius, then its largest component (the mask itself when the opening would leave nothing).

    Why: where the mixed prototypes stay high outside the nodule, the cut to the detection box leaves
    a straight-edged tongue of tissue on the mask (the box artefact, issue 13); a disc in proportion to
    the nodule cuts off such tongues and rounds the cut's corners, and leaves a compact mask as it is."""
    if fraction <= 0 or not mask.any():
        return mask
    radius = max(1, int(round(fraction * np.sqrt(mask.sum() / np.pi))))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, x0 = max(int(rows[0]) - radius - 1, 0), max(int(cols[0]) - radius - 1, 0)
    y1, x1 = int(rows[-1]) + radius + 2, int(cols[-1]) + radius + 2
    opened = largest_component(disc_opening(mask[y0:y1, x0:x1], radius))
    if not opened.any():
        return mask
    out = np.zeros_like(mask, dtype=bool)
    out[y0:y1, x0:x1] = opened
    return out


def plausible_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Keep the largest component and every other at least `min_fraction` of its area.

    A transverse view may show both lobes (and the isthmus) as separate regions of similar size;
    small islands far smaller than the main gland region are noise.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, kept)
