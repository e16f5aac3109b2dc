"""The box artefact: how often the index nodule's mask is cut straight by its detection box.

    .venv/bin/python bench/segmentation_boxcut.py --data ../shared/data --split select --opening 0 0.35

YOLOv8-seg cuts each instance's mask to its box (llnm.segmentation.postprocess.assemble_mask, widened by
`BOX_MARGIN`). Where the mixed prototypes stay above the mask threshold beyond the box, the mask ends in a
straight edge along the cut line: a box-shaped part that is no nodule outline. Per ddti_frames frame of
the split (ultrasound image found as at run time; the index nodule chosen as the product chooses it, by
agreement with the mirror image), on the model grid: the index nodule's mask as the product makes it (the
mean of the views that see it, thresholded, largest component, then opened with each `--opening` fraction),
and the share of its outline lying on the cut line while the uncut mask goes on beyond it. Reported: how
many frames have >= 5 % and >= 15 % of their outline there, and the worst frames by name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation import nodule
from llnm.segmentation.data import ddti_frame_pairs, read_grey
from llnm.segmentation.postprocess import assemble_mask, decode_yolo_seg, largest_component, open_mask
from llnm.segmentation.region import find_image_region

UNCUT = np.array([-1e6, -1e6, 1e6, 1e6], dtype=np.float32)  # a box that cuts nothing


def cut_share(mask: np.ndarray, uncut: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of the mask's outline on the cut line of `box` (x0, y0, x1, y1 exclusive) where `uncut`
    (the mask before the cut) continues on the other side."""
    size = mask.shape[0]
    x0, y0, x1, y1 = box
    edge = 0
    if x0 > 0:
        edge += int((mask[:, x0] & uncut[:, x0 - 1]).sum())
    if x1 < size:
        edge += int((mask[:, x1 - 1] & uncut[:, x1]).sum())
    if y0 > 0:
        edge += int((mask[y0, :] & uncut[y0 - 1, :]).sum())
    if y1 < size:
        edge += int((mask[y1 - 1, :] & uncut[y1, :]).sum())
    outline = int((mask & ~ndimage.binary_erosion(mask)).sum())
    return edge / outline if outline else 0.0


def frame_shares(backend, image: np.ndarray, openings: list[float]) -> list[float] | None:
    """The cut share of the frame's index nodule for each opening fraction; None when nothing is found.
    The mask is the product's: the mean of the views that see the index nodule (the frame, its mirror
    image, both smaller: `nodule.augmented_input`), on the frame's model grid, cut by the frame's box."""
    size = nodule.INPUT_SIZE
    batch, boxes_lb = nodule.augmented_input(find_image_region(image).crop(image))
    outputs = backend.infer("nodule_seg", {nodule.INPUT_NAME: batch})
    boxes, protos = outputs[nodule.OUTPUT_BOXES], outputs[nodule.OUTPUT_PROTOS]
    found = decode_yolo_seg(boxes[:1], nodule.NUM_MASKS, nodule.CONF_THRESHOLD, nodule.IOU_THRESHOLD)
    if not len(found):
        return None
    cut = [assemble_mask(found.coefficients[i], protos[:1], found.boxes[i], size, nodule.BOX_MARGIN)
           for i in range(len(found))]
    masks = [largest_component(c > nodule.MASK_THRESHOLD) for c in cut]
    views = [nodule._view_matches(cut, boxes[row:row + 1], protos[row:row + 1], row % 2 == 1,
                                  boxes_lb[row // 2], boxes_lb[0]) for row in range(1, len(boxes))]
    agreement = (found.scores + np.array([m[0] if m else 0.0 for m in views[0]], dtype=np.float32)) / 2
    chosen = nodule.select_index(agreement, np.array([int(m.sum()) for m in masks]))
    if chosen is None:
        return None
    seen = [matches[chosen][1] for matches in views if matches[chosen] is not None]
    mask = largest_component((cut[chosen] + sum(seen)) / (1 + len(seen)) > nodule.MASK_THRESHOLD)
    uncut = assemble_mask(found.coefficients[chosen], protos[:1], UNCUT, size) > nodule.MASK_THRESHOLD
    box = found.boxes[chosen].copy()
    dx, dy = (box[2] - box[0]) * nodule.BOX_MARGIN, (box[3] - box[1]) * nodule.BOX_MARGIN
    widened = np.clip(box + np.array([-dx, -dy, dx, dy], dtype=np.float32), 0, size)
    edges = tuple(int(round(float(v))) for v in widened)
    return [cut_share(open_mask(mask, fraction), uncut, edges) for fraction in openings]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--split", choices=["train", "select", "val"], default="select")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--opening", type=float, nargs="+", default=[0.0, nodule.OPEN_FRACTION])
    args = parser.parse_args(argv)
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    shares: dict[str, list[float]] = {}
    for image_path, _ in ddti_frame_pairs(args.data / "ddti_frames", (args.split,)):
        found = frame_shares(backend, read_grey(image_path), args.opening)
        if found is not None:
            shares[image_path.stem] = found
    for k, fraction in enumerate(args.opening):
        values = {name: v[k] for name, v in shares.items()}
        print(json.dumps({"opening": fraction, "frames": len(values),
                          "cut_5pct": sum(v >= 0.05 for v in values.values()),
                          "cut_15pct": sum(v >= 0.15 for v in values.values()),
                          "worst": [[n, round(v, 3)] for n, v in sorted(values.items(), key=lambda i: -i[1])[:5]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
