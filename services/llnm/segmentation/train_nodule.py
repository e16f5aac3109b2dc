"""Training and ONNX export of the nodule model: Ultralytics YOLOv8n-seg built from its yaml.

Needs the `train` extra (torch, ultralytics, opencv from ultralytics). Nothing is downloaded
(`YOLO_OFFLINE=1`, the model starts from random weights). The training set, built once into
`<out>/dataset` (outside the repository), holds per DDTI nodule of the train cases (split by case id):
- the DDTI crop itself (crop-like frames: the nodule fills much of the frame), and
- `composed_per_crop` whole frames composed on TG3K train frames (llnm.segmentation.compose);
plus, optionally, `llnm phantom` frames (each whole frame and a crop around its nodule). Validation: the DDTI val-case crops, one composed frame per
val crop on TG3K val frames.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from llnm.observability.logs import get_logger
from llnm.segmentation import nodule
from llnm.segmentation.compose import compose_frame
from llnm.segmentation.data import ddti_pairs, read_grey, read_mask, tg3k_pairs

log = get_logger(__name__)
DATASET_VERSION = "v1"


@dataclass
class NoduleTrainConfig:
    data: Path  # folder holding tg3k/ and ddti/
    out: Path  # dataset cache, Ultralytics run, log
    phantom: Path | None = None  # an `llnm phantom` output folder (views.csv + truth/)
    epochs: int = 40
    composed_per_crop: float = 1.0
    batch: int = 8  # with nbs = batch: one optimiser step per batch (Ultralytics would accumulate to 64)
    seed: int = 0
    threads: int = 2
    max_minutes: float = 60.0
    init: Path | None = None  # fine-tuning stage: start from these weights, no mosaic, no warm-up
    lr: float = 0.002


def polygons(mask: np.ndarray, min_area: float = 12.0) -> list[np.ndarray]:
    """Outer contours of a bool mask as (k, 2) x/y polygons (one per component)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if cv2.contourArea(c) >= min_area and len(c) >= 3]


def write_sample(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> bool:
    """One image + YOLO segmentation label file ("0 x1 y1 x2 y2 ..." normalised); False if no nodule."""
    polys = polygons(mask)
    if not polys:
        return False
    h, w = mask.shape
    Image.fromarray(image).save(root / "images" / split / f"{name}.png")
    lines = ["0 " + " ".join(f"{x / w:.5f} {y / h:.5f}" for x, y in p) for p in polys]
    (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return True


def phantom_pairs(folder: Path, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, nodule mask) pairs from an `llnm phantom` output (views.csv: image, nodule_mask paths):
    each whole frame, plus a crop around its nodule (margin 0.5-1.5 x the nodule size on each side)."""
    pairs = []
    with open(folder / "views.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            image, mask = read_grey(folder / row["image"]), read_mask(folder / row["nodule_mask"])
            if not mask.any():
                continue
            pairs.append((image, mask))
            rows, cols = np.nonzero(mask)
            size = max(np.ptp(rows), np.ptp(cols)) + 1
            m = [int(size * rng.uniform(0.5, 1.5)) for _ in range(4)]
            y0, y1 = max(0, rows.min() - m[0]), min(mask.shape[0], rows.max() + 1 + m[1])
            x0, x1 = max(0, cols.min() - m[2]), min(mask.shape[1], cols.max() + 1 + m[3])
            pairs.append((image[y0:y1, x0:x1], mask[y0:y1, x0:x1]))
    return pairs


def build_dataset(cfg: NoduleTrainConfig) -> Path:
    """Write the training set once (reused when its stamp matches); returns the data yaml path."""
    root = cfg.out / "dataset"
    stamp = {"version": DATASET_VERSION, "seed": cfg.seed, "composed_per_crop": cfg.composed_per_crop,
             "phantom": str(cfg.phantom or "")}
    yaml_path = root / "data.yaml"
    if (root / "stamp.json").is_file() and json.loads((root / "stamp.json").read_text()) == stamp:
        return yaml_path
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    rng = np.random.default_rng(cfg.seed)
    counts = {"train": 0, "val": 0}
    for split, per_crop in (("train", cfg.composed_per_crop), ("val", 0.5)):
        backgrounds = tg3k_pairs(cfg.data / "tg3k", split)
        for image_path, mask_path in tqdm(ddti_pairs(cfg.data / "ddti", split), desc=f"compose {split}"):
            crop, mask = read_grey(image_path), read_mask(mask_path)
            if not mask.any():
                continue
            stem = image_path.stem.replace("(", "_").replace(")", "")
            counts[split] += write_sample(root, split, f"crop_{stem}", crop, mask)
            whole, extra = int(per_crop), per_crop - int(per_crop)
            for k in range(whole + int(rng.random() < extra)):
                bg_image, bg_mask = backgrounds[int(rng.integers(len(backgrounds)))]
                frame, label = compose_frame(read_grey(bg_image), read_mask(bg_mask), crop, mask, rng)
                counts[split] += write_sample(root, split, f"comp{k}_{stem}", frame, label)
    if cfg.phantom is not None:
        for k, (frame, label) in enumerate(phantom_pairs(cfg.phantom, rng)):
            split = "val" if (k // 2) % 5 == 0 else "train"  # a view and its crop stay together
            counts[split] += write_sample(root, split, f"phantom_{k:05d}", frame, label)
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: nodule\n")
    (root / "stamp.json").write_text(json.dumps(stamp))
    log.info("nodule dataset written", path=str(root), count=counts["train"], stage="compose")
    return yaml_path


def train(cfg: NoduleTrainConfig) -> dict:
    """Train YOLOv8n-seg from its yaml at 256 px on CPU; returns a summary with the best weights path."""
    os.environ["YOLO_OFFLINE"] = "1"
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    import torch
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    torch_utils.NUM_THREADS = cfg.threads  # Ultralytics resets torch threads to its own default on CPU
    torch.set_num_threads(cfg.threads)
    yaml_path = build_dataset(cfg)
    model = YOLO(str(cfg.init) if cfg.init else "yolov8n-seg.yaml")
    started = time.monotonic()
    model.train(
        data=str(yaml_path), imgsz=nodule.INPUT_SIZE, epochs=cfg.epochs, time=cfg.max_minutes / 60,
        batch=cfg.batch, nbs=cfg.batch, workers=0, device="cpu", cache="ram", amp=False, plots=False, seed=cfg.seed,
        deterministic=True, project=str(cfg.out), name="yolo", exist_ok=True,
        pretrained=str(cfg.init) if cfg.init else False,
        optimizer="AdamW", lr0=cfg.lr, warmup_epochs=0 if cfg.init else 1, close_mosaic=2, patience=100,
        hsv_h=0.0, hsv_s=0.0, hsv_v=0.3, degrees=10.0, translate=0.1, scale=0.5, fliplr=0.5,
        mosaic=0.0 if cfg.init else 1.0,
        single_cls=True, verbose=True,
    )
    best = cfg.out / "yolo" / "weights" / "best.pt"
    summary = {"best": str(best), "minutes": (time.monotonic() - started) / 60, "seed": cfg.seed,
               "imgsz": nodule.INPUT_SIZE, "init": str(cfg.init or ""), "dataset": str(yaml_path.parent)}
    results = cfg.out / "yolo" / "results.csv"
    if results.is_file():
        summary["results_csv"] = str(results)
    return summary


def export_onnx(weights: Path, target: Path) -> Path:
    """Write the nodule model as ONNX: input `images` (batch dynamic), outputs `output0`, `output1`."""
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    exported = Path(YOLO(str(weights)).export(format="onnx", imgsz=nodule.INPUT_SIZE, dynamic=True,
                                              simplify=True, opset=17, device="cpu"))
    _fix_spatial_dims(exported)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(exported), target)
    return target


def _fix_spatial_dims(path: Path) -> None:
    """Keep the batch dimension dynamic but fix everything else (what Triton's config.pbtxt declares):
    input (batch, 3, S, S), output0 (batch, 4 + 1 + 32, anchors), output1 (batch, 32, S/4, S/4)."""
    import onnx

    size = nodule.INPUT_SIZE
    anchors = sum((size // stride) ** 2 for stride in (8, 16, 32))
    model = onnx.load(str(path))
    shapes = {nodule.INPUT_NAME: (3, size, size), nodule.OUTPUT_BOXES: (4 + 1 + nodule.NUM_MASKS, anchors),
              nodule.OUTPUT_PROTOS: (nodule.NUM_MASKS, size // 4, size // 4)}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        for dim, fixed in zip(dims[1:], shapes[value.name]):
            dim.dim_value = fixed
    onnx.save(model, str(path))
