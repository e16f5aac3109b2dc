"""The nodule model at run time: letterbox, YOLOv8-seg through the inference backend, index nodule.

Index nodule: each detection that passes the confidence threshold and NMS gets an agreement score,
the mean of its own score and that of the mirror image's detection of the same nodule (0 when the
mirror image does not see it); those with at least `RELATIVE_SCORE` of the best agreement are the
candidates, and the one with the largest mask area wins (the largest of the confidently found nodules
is the one reported, as in clinical practice). A structure the detector finds in one orientation only
is rarely the nodule (select cases: frames Dice 0.769 -> 0.784, crops unchanged; the model card). The
score reported for the view (and judged by the quality gate) is the detection's own. Its mask is
mapped back to the frame and reduced to its largest component.
When no detection is confident, the best one down to `FALLBACK_CONF_THRESHOLD` is the index nodule
with its low score: the quality gate declines such a view as "low confidence" instead of the product
claiming "no nodule found" for a frame where the detector did see one.

Test-time augmentation: one batch of four, the frame and its mirror image, and both again at
`SMALL_FILL` of the input's side (the frame seen smaller, centred on the pad). Detection uses the
frame; the agreement above uses the full-size mirror image; the index nodule's mask probability is
the mean over the frame and each other view that sees the same nodule (IoU >= `MATCH_IOU` on the
frame's model grid, mirrored and rescaled back). Flip averaging was chosen on 150 DDTI train crops
(+0.010 mean Dice), the smaller views with `MASK_THRESHOLD` 0.7 on the select cases (whole frames
0.783 -> 0.801, crops 0.858 -> 0.886; the model card, "Masks averaged over two sizes").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llnm.inference.backend import NODULE_SEG, InferenceBackend
from llnm.segmentation.postprocess import assemble_mask, decode_yolo_seg, largest_component, open_mask
from llnm.segmentation.marks import remove_marks
from llnm.segmentation.preprocess import Letterbox, letterbox, rebox, to_grey, unletterbox

INPUT_SIZE = 320  # model input side (pixels); fixed in the ONNX graph and Triton's config.pbtxt
INPUT_NAME = "images"  # (N, 3, 320, 320) float32 in [0, 1], grey repeated over 3 channels
OUTPUT_BOXES = "output0"  # (N, 4 + 1 + 32, 2100): 40x40 + 20x20 + 10x10 anchors
OUTPUT_PROTOS = "output1"  # (N, 32, 80, 80)
STRIDES = (8, 16, 32)  # YOLOv8's detection grids
NUM_MASKS = 32
PAD_VALUE = 114  # Ultralytics' letterbox grey; the model was trained with it
CONF_THRESHOLD = 0.25
#: when nothing reaches CONF_THRESHOLD, the best detection down to this score is still the index nodule
#: (its low score makes the quality gate decline the view as "low confidence"): a frame the detector
#: is unsure about is not reported as "no nodule found" (select cases: both such frames held the
#: outlined nodule at IoU >= 0.7)
FALLBACK_CONF_THRESHOLD = 0.1
IOU_THRESHOLD = 0.5
RELATIVE_SCORE = 0.8  # chosen on the select cases' whole frames (bench/segmentation_select.py)
#: on the mean of the views' probabilities (select cases, with SMALL_FILL; 0.8 for the frame and its
#: mirror image alone, chosen on training data: bench/segmentation_threshold.py)
MASK_THRESHOLD = 0.7
#: the second pair of views: the frame letterboxed into this share of the input's side (select cases:
#: every share from 0.5 to 0.9 gained 0.01-0.017 of mean Dice; 0.7 the best)
SMALL_FILL = 0.7
BOX_MARGIN = 0.15  # the mask is cut to its box widened by this share per side (the box artefact; model card)
#: the index nodule's mask is opened with a disc of this share of its equivalent radius: cuts off the
#: straight-edged tongues the box cut leaves where the mask leaks (postprocess.open_mask; select cases)
OPEN_FRACTION = 0.35
MATCH_IOU = 0.3  # another view's detection this close to the index nodule is the same nodule
#: a frame with less grey-level variation than this holds no nodule: the detector, trained on textured
#: frames, can answer anything on a blank one (the stage-5 model boxes the whole of a uniform frame)
MIN_TEXTURE_STD = 4.0


def anchors(size: int = INPUT_SIZE) -> int:
    """Detections per image of a YOLOv8 model with input side `size`: one per cell of each grid."""
    return sum((size // stride) ** 2 for stride in STRIDES)


@dataclass
class NoduleDetection:
    """The index nodule of one frame."""

    mask: np.ndarray  # (H, W) bool, the index nodule only
    score: float  # detector confidence of the index nodule
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in frame pixels: the mask's bounding box
    candidates: int  # nodules found in the frame (after NMS)


def nodule_input(image: np.ndarray, fill: float = 1.0) -> tuple[np.ndarray, Letterbox]:
    """The model input for one frame (burned-in calipers filled in: llnm.segmentation.marks), and where
    the frame sits in it (`fill` < 1: letterboxed into that share of the side)."""
    boxed, box = letterbox(remove_marks(to_grey(image)), INPUT_SIZE, PAD_VALUE, fill)
    tensor = np.repeat((boxed.astype(np.float32) / 255.0)[None, None], 3, axis=1)
    return tensor, box


def augmented_input(image: np.ndarray) -> tuple[np.ndarray, list[Letterbox]]:
    """The batch of four views (frame, mirror, small frame, small mirror) and the letterbox of each pair."""
    full, box = nodule_input(image)
    small, small_box = nodule_input(image, SMALL_FILL)
    batch = np.concatenate([full, full[..., ::-1], small, small[..., ::-1]])
    return np.ascontiguousarray(batch), [box, small_box]


def select_index(scores: np.ndarray, areas: np.ndarray) -> int | None:
    """Index of the index nodule: largest area among those scoring >= RELATIVE_SCORE x the best
    (`scores`: the agreement scores of the frame and its mirror image, or the frame's own)."""
    valid = areas > 0
    if not valid.any():
        return None
    best = float(scores[valid].max())
    eligible = np.flatnonzero(valid & (scores >= RELATIVE_SCORE * best))
    order = sorted(eligible, key=lambda i: (-int(areas[i]), -float(scores[i])))
    return int(order[0])


def segment_nodule(backend: InferenceBackend, image: np.ndarray) -> NoduleDetection | None:
    """The index nodule of an (H, W) uint8 greyscale B-mode crop, or None when no nodule is found."""
    if float(np.std(image)) < MIN_TEXTURE_STD:
        return None
    batch, boxes = augmented_input(image)
    outputs = backend.infer(NODULE_SEG, {INPUT_NAME: batch})
    return nodule_from_outputs(outputs[OUTPUT_BOXES], outputs[OUTPUT_PROTOS], boxes)


def nodule_from_outputs(output0: np.ndarray, protos: np.ndarray,
                        boxes: Letterbox | list[Letterbox]) -> NoduleDetection | None:
    """Post-processing of the raw YOLOv8-seg outputs of a batch in pairs (a view and its mirror image),
    one letterbox per pair: rows 0-1 the frame (detection), rows 2-3 the smaller view when present.
    Kept apart from the backend call for tests."""
    output0, protos = np.asarray(output0), np.asarray(protos)
    boxes = [boxes] if isinstance(boxes, Letterbox) else list(boxes)
    box = boxes[0]
    found = decode_yolo_seg(output0[:1], NUM_MASKS, FALLBACK_CONF_THRESHOLD, IOU_THRESHOLD)
    if not len(found):
        return None
    confident = found.scores >= CONF_THRESHOLD
    found = found.subset(confident if confident.any() else np.arange(len(found)) == 0)
    grids = [assemble_mask(found.coefficients[i], protos[:1], found.boxes[i], INPUT_SIZE, BOX_MARGIN)
             for i in range(len(found))]
    masks = [largest_component(unletterbox(grid, box) > MASK_THRESHOLD) for grid in grids]
    areas = np.array([int(m.sum()) for m in masks])
    views = [_view_matches(grids, output0[row:row + 1], protos[row:row + 1], row % 2 == 1,
                           boxes[row // 2], box) for row in range(1, min(len(output0), 2 * len(boxes)))]
    agreement = found.scores
    if views:
        agreement = (found.scores + np.array([m[0] if m else 0.0 for m in views[0]], dtype=np.float32)) / 2
    chosen = select_index(agreement, areas)
    if chosen is None:
        return None
    mask = masks[chosen]
    seen = [matches[chosen][1] for matches in views if matches[chosen] is not None]
    if seen:
        averaged = largest_component(unletterbox((grids[chosen] + sum(seen)) / (1 + len(seen)), box) > MASK_THRESHOLD)
        mask = averaged if averaged.any() else mask
    mask = open_mask(mask, OPEN_FRACTION)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return NoduleDetection(
        mask=mask,
        score=float(found.scores[chosen]),
        box=(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1),
        candidates=int((areas > 0).sum()),
    )


def _view_matches(grids: list[np.ndarray], output0: np.ndarray, protos: np.ndarray, mirrored: bool,
                  view_box: Letterbox, box: Letterbox) -> list[tuple[float, np.ndarray] | None]:
    """For each of the frame's detections (its probability map on the frame's model grid): the score
    and the probability map (mirrored back and moved onto the frame's grid) of this view's confident
    detection that overlaps it most, or None when none overlaps it by `MATCH_IOU`."""
    found = decode_yolo_seg(output0, NUM_MASKS, CONF_THRESHOLD, IOU_THRESHOLD)
    maps = []
    for j in range(len(found)):
        grid = assemble_mask(found.coefficients[j], protos, found.boxes[j], INPUT_SIZE, BOX_MARGIN)
        grid = grid[:, ::-1] if mirrored else grid
        maps.append(grid if view_box == box else rebox(grid, view_box, box))
    seen = [grid > MASK_THRESHOLD for grid in maps]
    matches: list[tuple[float, np.ndarray] | None] = []
    for grid in grids:
        target = grid > MASK_THRESHOLD
        best, best_iou = None, MATCH_IOU
        for j, candidate in enumerate(seen):
            union = int((candidate | target).sum())
            overlap = int((candidate & target).sum()) / union if union else 0.0
            if overlap >= best_iou:
                best, best_iou = (float(found.scores[j]), maps[j]), overlap
        matches.append(best)
    return matches
