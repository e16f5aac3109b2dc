"""Training and ONNX export of the gland model: U-Net++ (segmentation-models-pytorch) on TG3K.

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
from tqdm import tqdm

from llnm.observability.logs import get_logger
from llnm.segmentation import gland
from llnm.segmentation.data import read_grey, read_mask, tg3k_pairs
from llnm.segmentation.preprocess import letterbox

log = get_logger(__name__)

ENCODER = "mobilenet_v2"
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
    init: Path | None = None  # start from these weights (a second, fine-tuning stage) instead of random


def build_model() -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    return smp.UnetPlusPlus(encoder_name=ENCODER, encoder_weights=None, in_channels=1, classes=1,
                            decoder_channels=DECODER_CHANNELS)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (changes the aspect ratio, so letterbox padding varies), flip, intensity and noise."""
    h, w = image.shape
    if rng.random() < 0.7:
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image, mask = image[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    x = image.astype(np.float32) / 255.0
    x = np.power(x, rng.uniform(0.7, 1.4))
    x = (x - x.mean()) * rng.uniform(0.8, 1.25) + x.mean() + rng.uniform(-0.08, 0.08)
    x = x * rng.normal(1.0, rng.uniform(0.0, 0.12), x.shape) + rng.normal(0, rng.uniform(0, 0.03), x.shape)
    return np.clip(x * 255.0, 0, 255).astype(np.uint8), np.ascontiguousarray(mask)


def to_model(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Letterboxed (1, S, S) float input and (1, S, S) float target, as at run time."""
    x, _ = letterbox(image, gland.INPUT_SIZE, gland.PAD_VALUE)
    y, _ = letterbox(mask.astype(np.uint8) * 255, gland.INPUT_SIZE, 0)
    return (x.astype(np.float32) / 255.0)[None], (y > 127).astype(np.float32)[None]


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
    log.info("gland data loaded", count=len(train_set), stage="train")
    model = load_checkpoint(cfg.init).train() if cfg.init else build_model()
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
            picks = rng.integers(0, len(train_set), cfg.batch)
            batch = [to_model(*augment(*train_set[int(k)], rng)) for k in picks]
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
        minutes = (time.monotonic() - started) / 60
        history.append({"epoch": epoch + 1, "steps": step, "loss": float(np.mean(losses)) if losses else None,
                        "monitor_dice": dice, "minutes": round(minutes, 2)})
        log.info("gland epoch", epoch=epoch + 1, metric="monitor_dice", value=round(dice, 4),
                 seconds=round(minutes * 60))
        print(json.dumps(history[-1]), flush=True)
        if dice > best:
            best = dice
            torch.save(model.state_dict(), cfg.out / "gland_best.pt")
        if (time.monotonic() - started) >= budget_s or step >= total_steps:
            break
    model = load_checkpoint(cfg.out / "gland_best.pt")
    val_dice = validate(model, val_set)
    log.info("gland trained", metric="val_dice", value=round(val_dice, 4), count=len(val_set))
    summary = {"val_dice": val_dice, "val_images": len(val_set), "best_monitor_dice": best, "history": history,
               "encoder": ENCODER, "decoder_channels": list(DECODER_CHANNELS), "input_size": gland.INPUT_SIZE,
               "seed": cfg.seed, "steps": step, "batch": cfg.batch}
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
    """Write the gland model as ONNX (input `image`, output `probability`, dynamic batch)."""
    model = _WithSigmoid(load_checkpoint(checkpoint)).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 1, gland.INPUT_SIZE, gland.INPUT_SIZE)
    torch.onnx.export(model, (example,), str(target), input_names=[gland.INPUT_NAME],
                      output_names=[gland.OUTPUT_NAME], opset_version=17, dynamo=False,
                      dynamic_axes={gland.INPUT_NAME: {0: "batch"}, gland.OUTPUT_NAME: {0: "batch"}})
    _simplify(target)
    return target


def _simplify(path: Path) -> None:
    import onnxslim

    onnxslim.slim(str(path), str(path))

