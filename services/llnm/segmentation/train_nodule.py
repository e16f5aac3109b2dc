"""Training and ONNX export of the nodule model: Ultralytics YOLOv8-seg built from its yaml.

Needs the `train` extra (torch, ultralytics, opencv from ultralytics). Nothing is downloaded
(`YOLO_OFFLINE=1`, the model starts from random weights or from `init`). The scale (`arch`: n, s, m)
and the input size are options; the runtime's input size is `nodule.INPUT_SIZE`, so a model trained
at another size ships together with that constant and Triton's config. The training set, built once into
`<out>/dataset` (outside the repository), holds, for the DDTI train cases (`case_split`, by case id):
- the real whole frames of `ddti_frames/`, cropped to the ultrasound image as at run time
  (llnm.segmentation.region), each `frame_repeats` times (they are the product's own input); with
  `gamma_range`, every copy after the first with its grey levels regraded by a gamma drawn
  log-uniformly from that range (another device's display curve: `bench/segmentation_devices.py`
  measures the shipped model losing Dice on regraded frames; Ultralytics' own hsv_v is a linear gain)
  and, with `blur_max`, blurred by a Gaussian of sigma drawn uniformly from 0-`blur_max` pixels (a
  softer transducer or vendor filter: sigma 1.5 costs the shipped model 0.04-0.05 Dice; the bench);
- the DDTI crop of each nodule (crop-like frames: the nodule fills much of the frame), and
- `composed_per_crop` whole frames composed on TG3K train frames (llnm.segmentation.compose);
plus, optionally, `llnm phantom` frames (each whole frame and a crop around its nodule).
Validation (Ultralytics picks the best epoch on it): the whole frames of the "select" cases. The
"val" cases are never used here; they are the held-out measurement.
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

from llnm.inference.half_storage import store_weights_in_half
from llnm.observability.logs import get_logger
from llnm.segmentation import nodule
from llnm.segmentation.compose import compose_frame
from llnm.segmentation.data import case_split, ddti_frame_pairs, ddti_pairs, read_grey, read_mask, tg3k_pairs
from llnm.segmentation.preprocess import regrade, soften
from llnm.segmentation.region import find_image_region

log = get_logger(__name__)
DATASET_VERSION = "v2"


@dataclass
class NoduleTrainConfig:
    data: Path  # folder holding tg3k/, ddti/ and ddti_frames/
    out: Path  # dataset cache, Ultralytics run, log
    phantom: Path | None = None  # an `llnm phantom` output folder (views.csv + truth/)
    epochs: int = 40
    composed_per_crop: float = 1.0
    batch: int = 8  # with nbs = batch: one optimiser step per batch (Ultralytics would accumulate to 64)
    seed: int = 0
    threads: int = 2
    max_minutes: float = 60.0
    init: Path | None = None  # fine-tuning stage: start from these weights (.pt or a shipped .onnx), no warm-up
    lr: float = 0.002
    mosaic: bool = False  # fine-tuning stage only: keep mosaic on (a stage from random weights always uses it)
    frame_repeats: int = 2  # copies of each real whole frame in the training set
    gamma_range: tuple[float, float] | None = None  # regrade whole-frame copies after the first (None: never)
    blur_max: float | None = None  # blur whole-frame copies after the first by sigma 0..blur_max px (None: never)
    imgsz: int = nodule.INPUT_SIZE
    arch: str = "s"  # YOLOv8 scale built from yolov8{arch}-seg.yaml from random weights (s: the shipped stage 8)
    device: str = "cpu"  # "cpu", or a CUDA device ("0") where a GPU is lent
    workers: int = 0  # data-loading processes (0: in the training process, as on a shared CPU)
    close_mosaic: int | None = None  # last epochs without mosaic (default: 4 fine-tuning, 2 from random weights)
    dataset: Path | None = None  # a training set already written (`prepared_dataset`): `data` is then not read


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


def gamma_draw(rng: np.random.Generator, gamma_range: tuple[float, float]) -> float:
    """A gamma drawn log-uniformly from `gamma_range` (so 0.7 and 1/0.7 are alike likely)."""
    low, high = (float(np.log(g)) for g in gamma_range)
    return float(np.exp(rng.uniform(low, high)))


def frame_crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A whole frame and its mask cut to the ultrasound image, exactly as the runtime cuts it."""
    region = find_image_region(image)
    return region.crop(image), region.crop(mask)


def build_dataset(cfg: NoduleTrainConfig) -> Path:
    """Write the training set once (reused when its stamp matches, also when the folder was moved to
    another machine: the yaml is rewritten with the folder's path); returns the data yaml path."""
    root = cfg.out / "dataset"
    stamp = {"version": DATASET_VERSION, "seed": cfg.seed, "composed_per_crop": cfg.composed_per_crop,
             "phantom": str(cfg.phantom or ""), "frame_repeats": cfg.frame_repeats}
    if cfg.gamma_range is not None:  # datasets written before the option keep their stamp
        stamp["gamma_range"] = list(cfg.gamma_range)
    if cfg.blur_max is not None:
        stamp["blur_max"] = cfg.blur_max
    yaml_path = root / "data.yaml"
    if (root / "stamp.json").is_file() and json.loads((root / "stamp.json").read_text()) == stamp:
        _write_yaml(yaml_path)
        return yaml_path
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    rng = np.random.default_rng(cfg.seed)
    counts = {"train": 0, "val": 0}
    frames = cfg.data / "ddti_frames"
    if frames.is_dir():
        for case_splits, split, repeats in ((("train",), "train", cfg.frame_repeats), (("select",), "val", 1)):
            for image_path, mask_path in tqdm(ddti_frame_pairs(frames, case_splits), desc=f"frames {split}"):
                image, mask = frame_crop(read_grey(image_path), read_mask(mask_path))
                for k in range(repeats):
                    copy = image
                    if k > 0 and cfg.gamma_range is not None:
                        copy = regrade(copy, gamma_draw(rng, cfg.gamma_range))
                    if k > 0 and cfg.blur_max is not None:
                        copy = soften(copy, float(rng.uniform(0.0, cfg.blur_max)))
                    counts[split] += write_sample(root, split, f"frame{k}_{image_path.stem}", copy, mask)
    backgrounds = tg3k_pairs(cfg.data / "tg3k", "train")
    for image_path, mask_path in tqdm(ddti_pairs(cfg.data / "ddti", "train"), desc="compose train"):
        if case_split(image_path.name) != "train":
            continue
        crop, mask = read_grey(image_path), read_mask(mask_path)
        if not mask.any():
            continue
        stem = image_path.stem.replace("(", "_").replace(")", "")
        counts["train"] += write_sample(root, "train", f"crop_{stem}", crop, mask)
        whole, extra = int(cfg.composed_per_crop), cfg.composed_per_crop - int(cfg.composed_per_crop)
        for k in range(whole + int(rng.random() < extra)):
            bg_image, bg_mask = backgrounds[int(rng.integers(len(backgrounds)))]
            frame, label = compose_frame(read_grey(bg_image), read_mask(bg_mask), crop, mask, rng)
            counts["train"] += write_sample(root, "train", f"comp{k}_{stem}", frame, label)
    if cfg.phantom is not None:
        for k, (frame, label) in enumerate(phantom_pairs(cfg.phantom, rng)):
            counts["train"] += write_sample(root, "train", f"phantom_{k:05d}", frame, label)
    _write_yaml(yaml_path)
    (root / "stamp.json").write_text(json.dumps(stamp))
    log.info("nodule dataset written", path=str(root), count=counts["train"], stage="compose")
    return yaml_path


def prepared_dataset(root: Path) -> Path:
    """The data yaml of a training set written earlier, elsewhere (`build_dataset`, or
    scripts/device/pack_nodule.py, which shrinks it to travel to a GPU machine without the data):
    images/{train,val} and labels/{train,val} under `root`; the yaml is rewritten with root's path."""
    root = Path(root)
    missing = [d for d in ("images/train", "images/val", "labels/train", "labels/val") if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} is no nodule training set: {', '.join(missing)} missing")
    yaml_path = root / "data.yaml"
    _write_yaml(yaml_path)
    return yaml_path


def _write_yaml(yaml_path: Path) -> None:
    root = yaml_path.parent.resolve()
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: nodule\n")


def train(cfg: NoduleTrainConfig) -> dict:
    """Train YOLOv8-seg (from its yaml or from `init`); returns a summary with the best weights path."""
    os.environ["YOLO_OFFLINE"] = "1"
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    import torch
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    torch_utils.NUM_THREADS = cfg.threads  # Ultralytics resets torch threads to its own default on CPU
    torch.set_num_threads(cfg.threads)
    yaml_path = build_dataset(cfg) if cfg.dataset is None else prepared_dataset(cfg.dataset)
    init = cfg.init
    if init is not None and init.suffix == ".onnx":
        images = sorted(p for p in (yaml_path.parent / "images" / "train").iterdir() if p.suffix in (".png", ".jpg"))
        calibration = [read_grey(p) for p in random.Random(cfg.seed).sample(images, min(64, len(images)))]
        init = checkpoint_from_onnx(init, calibration, cfg.out / "init_from_onnx.pt")
    if cfg.arch not in ("n", "s", "m"):
        raise ValueError(f"unknown YOLOv8 scale {cfg.arch!r}: n, s or m")
    model = YOLO(str(init) if init else f"yolov8{cfg.arch}-seg.yaml")
    started = time.monotonic()
    model.train(
        data=str(yaml_path), imgsz=cfg.imgsz, epochs=cfg.epochs, time=cfg.max_minutes / 60,
        batch=cfg.batch, nbs=cfg.batch, workers=cfg.workers, device=cfg.device, cache="ram", amp=False, plots=False,
        seed=cfg.seed, deterministic=cfg.device == "cpu", project=str(cfg.out), name="yolo", exist_ok=True,
        pretrained=str(init) if init else False,
        optimizer="AdamW", lr0=cfg.lr, warmup_epochs=0 if init else 1, patience=100,
        close_mosaic=cfg.close_mosaic if cfg.close_mosaic is not None else (4 if init else 2),
        hsv_h=0.0, hsv_s=0.0, hsv_v=0.3, degrees=10.0, translate=0.1, scale=0.5, fliplr=0.5,
        mosaic=1.0 if init is None or cfg.mosaic else 0.0,
        single_cls=True, verbose=True,
    )
    best = cfg.out / "yolo" / "weights" / "best.pt"
    summary = {"best": str(best), "minutes": (time.monotonic() - started) / 60, "seed": cfg.seed,
               "imgsz": cfg.imgsz, "arch": cfg.arch, "device": cfg.device, "init": str(cfg.init or ""),
               "mosaic": cfg.mosaic, "gamma_range": list(cfg.gamma_range) if cfg.gamma_range else None,
               "blur_max": cfg.blur_max,
               "dataset": str(yaml_path.parent)}
    results = cfg.out / "yolo" / "results.csv"
    if results.is_file():
        summary["results_csv"] = str(results)
    return summary


def export_onnx(weights: Path, target: Path, size: int = nodule.INPUT_SIZE) -> Path:
    """Write the nodule model as ONNX: input `images` (batch dynamic), outputs `output0`, `output1`;
    `size` is the input side the runtime letterboxes to (nodule.INPUT_SIZE). Weights stored in half,
    computed in float32 (llnm.inference.half_storage)."""
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    exported = Path(YOLO(str(weights)).export(format="onnx", imgsz=size, dynamic=True,
                                              simplify=True, opset=17, device="cpu"))
    _fix_spatial_dims(exported, size)
    store_weights_in_half(exported)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(exported), target)
    return target


def _fix_spatial_dims(path: Path, size: int) -> None:
    """Keep the batch dimension dynamic but fix everything else (what Triton's config.pbtxt declares):
    input (batch, 3, S, S), output0 (batch, 4 + 1 + 32, anchors), output1 (batch, 32, S/4, S/4)."""
    import onnx

    model = onnx.load(str(path))
    shapes = {nodule.INPUT_NAME: (3, size, size), nodule.OUTPUT_BOXES: (4 + 1 + nodule.NUM_MASKS, nodule.anchors(size)),
              nodule.OUTPUT_PROTOS: (nodule.NUM_MASKS, size // 4, size // 4)}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        for dim, fixed in zip(dims[1:], shapes[value.name]):
            dim.dim_value = fixed
    onnx.save(model, str(path))


def checkpoint_from_onnx(onnx_path: Path, calibration: list[np.ndarray], target: Path) -> Path:
    """Turn a shipped nodule ONNX file back into a trainable Ultralytics checkpoint: (W, b) per layer
    loaded, batch norms re-estimated on `calibration` grey frames (llnm.segmentation.folded_bn), so the
    checkpoint computes exactly what the ONNX file does and fine-tuning continues from it."""
    os.environ["YOLO_OFFLINE"] = "1"
    import torch
    from ultralytics import __version__
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.nn.tasks import SegmentationModel

    from llnm.inference.half_storage import read_weights
    from llnm.segmentation.folded_bn import fold_into, recalibrate

    weights = {name: torch.from_numpy(array) for name, array in read_weights(onnx_path).items()}
    stem = weights.get("model.0.conv.weight")
    scale = {16: "n", 32: "s", 48: "m"}.get(int(stem.shape[0])) if stem is not None and stem.ndim == 4 else None
    if scale is None:
        raise ValueError(f"{onnx_path} is not a YOLOv8-seg export: its first layer is no YOLOv8 n/s/m stem")
    model = SegmentationModel(f"yolov8{scale}-seg.yaml", nc=1, verbose=False)
    folded: dict[torch.nn.BatchNorm2d, torch.Tensor] = {}
    state = model.state_dict()
    loaded: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, Conv) and isinstance(module.bn, torch.nn.BatchNorm2d):
            if f"{name}.conv.bias" not in weights:
                raise ValueError(f"{onnx_path} is not a YOLOv8{scale}-seg export: it has no {name}.conv weights")
            w, b = weights[f"{name}.conv.weight"], weights[f"{name}.conv.bias"]
            fold_into(module.conv, module.bn, w, b)
            folded[module.bn] = b
            loaded.update(f"{name}.{k}" for k in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
                                                   "bn.running_var", "bn.num_batches_tracked"))
    for key in state:
        if key not in loaded and key in weights:
            state[key].copy_(weights[key])
            loaded.add(key)
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{onnx_path} lacks weights for {missing[:5]} ({len(missing)} in all): not a YOLOv8{scale}-seg export")
    batch = torch.from_numpy(np.stack([nodule.nodule_input(image)[0][0] for image in calibration]))
    drift = recalibrate(model, folded, batch, _boxes)
    if drift > 1e-2:
        raise RuntimeError(f"rebuilt batch norms change the output by {drift:.3g}")
    model.names = {0: "nodule"}
    model.args = {"task": "segment", "imgsz": nodule.INPUT_SIZE, "single_cls": True}
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {"task": "segment", "imgsz": nodule.INPUT_SIZE},
                "version": __version__, "source_onnx": str(onnx_path)}, target)
    log.info("nodule checkpoint rebuilt from onnx", path=str(target), stage="recover", drift=drift)
    return target


def _boxes(output) -> "torch.Tensor":
    """The (N, 4 + 1 + 32, anchors) tensor of a YOLOv8-seg forward pass (eval mode nests it in tuples)."""
    while isinstance(output, (list, tuple)):
        output = output[0]
    return output
