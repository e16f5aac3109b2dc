"""Training and ONNX export of the gland model: U-Net++ (segmentation-models-pytorch) on TG3K, with
checked pseudo-labels on real whole frames.

TG3K (full gland masks) comes from a few videos of one device. Whole frames of other scanners
(`ddti_frames/`, train cases only, cut to the ultrasound image as at run time) carry no gland outline,
but every outlined nodule lies inside the thyroid. They are pseudo-labelled by the starting model
(`pseudo_label`): its gland mask joined with the outlined nodule, holes filled; a frame is kept only
when the check passes (the starting gland already covers at least `PSEUDO_MIN_INSIDE` of the nodule, so
the label is that gland and not a guess, and covers at most `PSEUDO_MAX_AREA` of the image, so it is
not a spill). What the model learns from them: a real nodule is part of the gland. (Partial
supervision, nodule = gland and two image bands = not gland, was tried first and dropped: alone it is
degenerate, a "gland" filling everything between the bands covers every nodule.) Composed frames add
the same lesson with full labels: real DDTI nodule crops (train cases) pasted into real TG3K glands
(llnm.segmentation.compose), the gland label including the nodule. TG3K frames are also zoomed on the
gland (other scanners' fields of view). Selection (the checkpoint kept, `selection_score`): the mean of
TG3K val Dice and the Dice on composed frames of the "select" cases, among checkpoints that keep the
select frames' nodules inside the gland; never the held-out "val" cases.

Needs the `train` extra (torch, segmentation-models-pytorch). The runtime never imports this module.
Model: UnetPlusPlus, MobileNetV2 encoder built from scratch (encoder_weights=None), decoder channels
(128, 64, 32, 16, 8), 1 input channel, 128 x 128 letterboxed input (see llnm.segmentation.gland).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from llnm.inference.half_storage import read_weights, store_weights_in_half
from llnm.observability.logs import get_logger
from llnm.segmentation import gland
from llnm.segmentation.data import case_split, ddti_frame_pairs, paired_files, read_grey, read_mask, tg3k_pairs
from llnm.segmentation.folded_bn import fold_into, recalibrate
from llnm.segmentation.preprocess import letterbox
from llnm.segmentation.region import find_image_region

log = get_logger(__name__)

ENCODER = "mobilenet_v2"
PSEUDO_MIN_INSIDE = 0.5  # a frame is pseudo-labelled only when the starting gland covers this much of its nodule
PSEUDO_MAX_AREA = 0.6  # ... and covers at most this share of the ultrasound image
MIN_SELECT_INSIDE = 0.85  # median share of each select-frame nodule inside the gland a kept checkpoint needs
DECODER_CHANNELS = (128, 64, 32, 16, 8)


@dataclass
class GlandTrainConfig:
    data: Path  # TG3K root (train/ and val/)
    out: Path  # checkpoints and log
    epochs: int = 8
    samples_per_epoch: int = 1400
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2
    max_minutes: float = 60.0
    monitor: int = 80  # val images checked after each epoch (all are checked at the end)
    init: Path | None = None  # start from these weights (.pt state dict or a shipped model.onnx) instead of random
    frames: Path | None = None  # ddti_frames/ root: pseudo-labelled real whole frames (needs `init`)
    frame_share: float = 0.125  # share of each batch drawn from the pseudo-labelled whole frames
    crops: Path | None = None  # ddti/ root: real nodules composed into TG3K glands, fully labelled
    composed_share: float = 0.25  # share of each batch drawn from the composed frames


def build_model() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.UnetPlusPlus(encoder_name=ENCODER, encoder_weights=None, in_channels=1, classes=1,
                            decoder_channels=DECODER_CHANNELS)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (changes the aspect ratio, so letterbox padding varies) or a zoom on the gland, flip,
    resolution, blur, intensity and noise."""
    h, w = image.shape[:2]
    fg = mask[..., 0] if mask.ndim == 3 else mask
    if rng.random() < 0.4 and fg.any():  # zoom on the gland: other scanners' fields of view (DDTI frames)
        rows, cols = np.nonzero(fg)
        ch, cw = int(h * rng.uniform(0.3, 0.6)), int(w * rng.uniform(0.3, 0.6))
        k = int(rng.integers(rows.size))
        y0 = int(np.clip(rows[k] - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, h - ch))
        x0 = int(np.clip(cols[k] - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, w - cw))
        image, mask = image[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]
    elif rng.random() < 0.7:
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image, mask = image[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.3:  # another scanner's resolution: down- and up-sampled
        factor = rng.uniform(0.4, 0.8)
        small = (max(8, int(image.shape[1] * factor)), max(8, int(image.shape[0] * factor)))
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(small, Image.BILINEAR)
                           .resize(image.shape[::-1], Image.BILINEAR))
    if rng.random() < 0.3:  # another scanner's speckle size / smoothing
        image = ndimage.gaussian_filter(image.astype(np.float32), rng.uniform(0.5, 1.5))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = np.power(x, rng.uniform(0.6, 1.6))
    x = (x - x.mean()) * rng.uniform(0.8, 1.25) + x.mean() + rng.uniform(-0.08, 0.08)
    x = x * rng.normal(1.0, rng.uniform(0.0, 0.12), x.shape) + rng.normal(0, rng.uniform(0, 0.03), x.shape)
    return np.clip(x * 255.0, 0, 255).astype(np.uint8), np.ascontiguousarray(mask)


def to_model(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Letterboxed (1, S, S) float input and (1, S, S) float target, as at run time."""
    x, _ = letterbox(image, gland.INPUT_SIZE, gland.PAD_VALUE)
    y, _ = letterbox(mask.astype(np.uint8) * 255, gland.INPUT_SIZE, 0)
    return (x.astype(np.float32) / 255.0)[None], (y > 127).astype(np.float32)[None]


def frame_view(image: np.ndarray, nodule: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A whole frame and its nodule outline cut to the ultrasound image, as at run time."""
    region = find_image_region(image)
    if region is None:
        return image, nodule.astype(bool)
    return region.crop(image), region.crop(nodule).astype(bool)


def predict_gland(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The model's gland mask as at run time (each image of a dual display alone, flip test-time
    augmentation, plausible regions); all False when none is found."""
    batch, panels, boxes = gland.gland_batch(image)
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.from_numpy(batch))).numpy()
    pred = gland.gland_from_batch(prob, panels, boxes, image.shape[:2])
    return np.zeros(image.shape, dtype=bool) if pred is None else pred


def pseudo_label(model: torch.nn.Module, image: np.ndarray, nodule: np.ndarray) -> np.ndarray | None:
    """The checked pseudo-label of one whole frame (see the module doc), or None when the check fails."""
    pred = predict_gland(model, image)
    if not nodule.any() or (pred & nodule).sum() < PSEUDO_MIN_INSIDE * nodule.sum():
        return None
    if pred.mean() > PSEUDO_MAX_AREA:
        return None
    return ndimage.binary_fill_holes(pred | nodule)


def selection_score(tg3k_dice: float, composed_dice: float | None, covered: float | None) -> float:
    """Which checkpoint to keep: the best mean Dice on TG3K and on composed frames (real nodules inside
    real glands, fully labelled), among those that keep each real nodule inside the gland on the select
    frames (median share >= MIN_SELECT_INSIDE); none does: the one that comes closest."""
    dice = tg3k_dice if composed_dice is None else (tg3k_dice + composed_dice) / 2
    if covered is None or covered >= MIN_SELECT_INSIDE:
        return dice
    return -1.0 + covered


def composed_frames(crops_root: Path, backgrounds: list[tuple[np.ndarray, np.ndarray]], splits: tuple[str, ...],
                    rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (frame, gland) pair per DDTI crop of the given case splits, the crop's nodule composed into a
    random TG3K gland (llnm.segmentation.compose): the gland label includes the nodule."""
    from llnm.segmentation.compose import compose_with_gland

    out = []
    for image_path, mask_path in paired_files(crops_root / "cropped", crops_root / "mask"):
        if case_split(image_path.name) not in splits:
            continue
        crop, nodule = read_grey(image_path), read_mask(mask_path)
        if not nodule.any():
            continue
        bg, bg_gland = backgrounds[int(rng.integers(len(backgrounds)))]
        frame, _, gland_mask = compose_with_gland(bg, bg_gland, crop, nodule, rng)
        out.append((frame, gland_mask))
    return out


def coverage(model: torch.nn.Module, frames: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Median share of each nodule covered by the predicted gland, and the median gland share of the
    image, on whole frames (the whole-frame measure of a gland model; the second keeps it honest), with
    the gland predicted as at run time (`predict_gland`)."""
    covered, area = [], []
    for image, nodule in frames:
        pred = predict_gland(model, image)
        covered.append(float((pred & nodule).sum() / max(1, nodule.sum())))
        area.append(float(pred.mean()))
    model.train()
    return float(np.median(covered)), float(np.median(area))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    total = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (total + 1)).mean()


def validate(model: torch.nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean per-image Dice on the validation frames, at their own resolution (empty vs empty = 1)."""
    model.eval()
    scores = []
    with torch.no_grad():
        for image, mask in pairs:
            x, box = letterbox(image, gland.INPUT_SIZE, gland.PAD_VALUE)
            prob = torch.sigmoid(model(torch.from_numpy(x.astype(np.float32) / 255.0)[None, None]))[0, 0].numpy()
            pred = gland.gland_from_probability(prob, box)
            pred = np.zeros_like(mask) if pred is None else pred
            total = pred.sum() + mask.sum()
            scores.append(1.0 if total == 0 else 2.0 * (pred & mask).sum() / total)
    model.train()
    return float(np.mean(scores))


def train(cfg: GlandTrainConfig) -> dict:
    """Train; keep the checkpoint with the best val Dice. Returns the summary.

    The learning rate follows a cosine over whichever runs out first, the planned steps or the time
    budget, so a run stopped by the budget on a busy machine has still annealed."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    train_set = [(read_grey(i), read_mask(m)) for i, m in tg3k_pairs(cfg.data, "train")]
    val_set = [(read_grey(i), read_mask(m)) for i, m in tg3k_pairs(cfg.data, "val")]
    monitor = [val_set[int(k)] for k in rng.choice(len(val_set), min(cfg.monitor, len(val_set)), replace=False)]
    composed_train, composed_val = [], []
    if cfg.crops is not None:
        composed_train = composed_frames(cfg.crops, train_set, ("train",), rng)
        composed_val = composed_frames(cfg.crops, val_set, ("select",), np.random.default_rng(cfg.seed + 1))
    init = cfg.init
    if init is not None and init.suffix == ".onnx":
        calibration = [train_set[int(k)][0] for k in rng.choice(len(train_set), 32, replace=False)]
        init = checkpoint_from_onnx(init, calibration, cfg.out / "init_from_onnx.pt")
    model = load_checkpoint(init).train() if init else build_model()
    frames_train: list[tuple[np.ndarray, np.ndarray]] = []  # (view, pseudo-labelled gland)
    frames_select: list[tuple[np.ndarray, np.ndarray]] = []  # (view, nodule): the whole-frame measure
    frames_offered = 0
    if cfg.frames is not None:
        frames_select = [frame_view(read_grey(i), read_mask(m)) for i, m in ddti_frame_pairs(cfg.frames, ("select",))]
        if cfg.frame_share > 0:
            if init is None:
                raise ValueError("pseudo-labelled frames need a starting model (init)")
            for i, m in ddti_frame_pairs(cfg.frames, ("train",)):
                view, nodule = frame_view(read_grey(i), read_mask(m))
                frames_offered += 1
                label = pseudo_label(model, view, nodule)
                if label is not None:
                    frames_train.append((view, label))
            model.train()
    log.info("gland data loaded", count=len(train_set), frames=len(frames_train), composed=len(composed_train),
             stage="train", total=frames_offered)
    steps_per_epoch = cfg.samples_per_epoch // cfg.batch
    total_steps = cfg.epochs * steps_per_epoch
    budget_s = cfg.max_minutes * 60
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    history, best, started, step = [], -1.0, time.monotonic(), 0
    for epoch in range(cfg.epochs):
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"gland epoch {epoch + 1}/{cfg.epochs}", mininterval=10)
        for _ in bar:
            progress = max(step / total_steps, (time.monotonic() - started) / budget_s)
            if progress >= 1.0:
                break
            warm = min(1.0, (step + 1) / 30)
            for group in optimiser.param_groups:
                group["lr"] = cfg.lr * warm * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * progress)))
            n_frames = int(round(cfg.batch * cfg.frame_share)) if frames_train else 0
            n_composed = int(round(cfg.batch * cfg.composed_share)) if composed_train else 0
            picks = rng.integers(0, len(train_set), cfg.batch - n_frames - n_composed)
            batch = [to_model(*augment(*train_set[int(k)], rng)) for k in picks]
            batch += [to_model(*augment(*composed_train[int(k)], rng))
                      for k in rng.integers(0, max(1, len(composed_train)), n_composed)]
            batch += [to_model(*augment(*frames_train[int(k)], rng))
                      for k in rng.integers(0, max(1, len(frames_train)), n_frames)]
            x = torch.from_numpy(np.stack([b[0] for b in batch]))
            y = torch.from_numpy(np.stack([b[1] for b in batch]))
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        dice = validate(model, monitor)
        composed_dice = validate(model, composed_val) if composed_val else None
        covered, area = coverage(model, frames_select) if frames_select else (None, None)
        minutes = (time.monotonic() - started) / 60
        history.append({"epoch": epoch + 1, "steps": step, "loss": float(np.mean(losses)) if losses else None,
                        "monitor_dice": dice, "composed_select_dice": composed_dice,
                        "select_nodule_inside": covered, "select_gland_area": area,
                        "minutes": round(minutes, 2)})
        log.info("gland epoch", epoch=epoch + 1, metric="monitor_dice", value=round(dice, 4),
                 seconds=round(minutes * 60))
        print(json.dumps(history[-1]), flush=True)
        score = selection_score(dice, composed_dice, covered)
        if score > best:
            best = score
            torch.save(model.state_dict(), cfg.out / "gland_best.pt")
        if (time.monotonic() - started) >= budget_s or step >= total_steps:
            break
    model = load_checkpoint(cfg.out / "gland_best.pt")
    val_dice = validate(model, val_set)
    log.info("gland trained", metric="val_dice", value=round(val_dice, 4), count=len(val_set))
    summary = {"val_dice": val_dice, "val_images": len(val_set), "best_selection_score": best, "history": history,
               "encoder": ENCODER, "decoder_channels": list(DECODER_CHANNELS), "input_size": gland.INPUT_SIZE,
               "seed": cfg.seed, "steps": step, "batch": cfg.batch,
               "pseudo_labelled_frames": len(frames_train), "frames_offered": frames_offered}
    (cfg.out / "gland_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class _WithSigmoid(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image))


def load_checkpoint(path: Path) -> torch.nn.Module:
    model = build_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def export_onnx(checkpoint: Path, target: Path) -> Path:
    """Write the gland model as ONNX (input `image`, output `probability`, dynamic batch), its weights
    stored in half precision and computed in float32 (`llnm.inference.half_storage`: half the bytes
    in git and in every worker image)."""
    model = _WithSigmoid(load_checkpoint(checkpoint)).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 1, gland.INPUT_SIZE, gland.INPUT_SIZE)
    torch.onnx.export(model, (example,), str(target), input_names=[gland.INPUT_NAME],
                      output_names=[gland.OUTPUT_NAME], opset_version=17, dynamo=False,
                      dynamic_axes={gland.INPUT_NAME: {0: "batch"}, gland.OUTPUT_NAME: {0: "batch"}})
    _simplify(target)
    store_weights_in_half(target)
    return target


def _simplify(path: Path) -> None:
    import onnxslim

    onnxslim.slim(str(path), str(path))



def _scope_to_module(node_name: str) -> str:
    """'/model/encoder/features.1/conv/conv.0/conv.0.0/Conv' -> 'encoder.features.1.conv.0.0'."""
    segments = node_name.strip("/").split("/")[1:-1]  # drop the wrapper's 'model' and the op name
    dotted, previous = "", ""
    for seg in segments:
        if previous and seg.startswith(previous + "."):
            dotted = dotted[: len(dotted) - len(previous)] + seg
        else:
            dotted = f"{dotted}.{seg}" if dotted else seg
        previous = seg
    return dotted


def checkpoint_from_onnx(onnx_path: Path, calibration: list[np.ndarray], target: Path) -> Path:
    """Turn a shipped gland ONNX file back into a trainable state dict (llnm.segmentation.folded_bn):
    convolutions matched to the file's nodes by their export scope names, batch norms re-estimated on
    `calibration` frames."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    tensors = {name: torch.from_numpy(array) for name, array in read_weights(onnx_path).items()}
    model = build_model()
    modules = dict(model.named_modules())
    order = list(modules)
    folded: dict[torch.nn.BatchNorm2d, torch.Tensor] = {}
    matched = 0
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        canonical = _scope_to_module(node.name)
        names = [n for n in order if isinstance(modules[n], torch.nn.Conv2d)
                 and n.replace("blocks.", "") == canonical]
        if len(names) != 1:
            raise ValueError(f"{onnx_path}: no unique module for {node.name} ({names})")
        conv = modules[names[0]]
        weight, bias = tensors[node.input[1]], tensors[node.input[2]]
        following = modules[order[order.index(names[0]) + 1]] if order.index(names[0]) + 1 < len(order) else None
        if isinstance(following, torch.nn.BatchNorm2d) and conv.bias is None:
            fold_into(conv, following, weight, bias)
            folded[following] = bias
        elif conv.bias is not None:
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
        else:
            raise ValueError(f"{onnx_path}: {names[0]} has a bias in the file but no batch norm to hold it")
        matched += 1
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in modules.values())
    if matched != convs:
        raise ValueError(f"{onnx_path}: {matched} convolutions in the file, {convs} in the model")
    batch = torch.from_numpy(np.stack([gland.gland_input(image)[0][0] for image in calibration]))
    drift = recalibrate(model, folded, batch, torch.sigmoid)
    if drift > 1e-3:
        raise RuntimeError(f"rebuilt batch norms change the output by {drift:.3g}")
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), target)
    log.info("gland checkpoint rebuilt from onnx", path=str(target), stage="recover", drift=drift)
    return target
