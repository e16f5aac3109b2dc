"""Choose the nodule mask threshold on training data only (the model card's "Mask threshold" table).

    .venv/bin/python bench/segmentation_threshold.py --data ../shared/data --model-repository model_repository

Two training sets, never the validation cases: `--crops` DDTI train-case crops (a crop counts as a
frame) and `--composed` whole frames composed from other DDTI train crops on TG3K train frames
(llnm.segmentation.compose, seed 4321; training used seed 0). For each threshold: the mean Dice of the
runtime path (llnm.segmentation.segment_nodule, flip test-time augmentation included) on each set and
the mean of the two; the highest mean wins. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation import nodule
from llnm.segmentation.compose import compose_frame
from llnm.segmentation.data import ddti_pairs, read_grey, read_mask, tg3k_pairs
from llnm.segmentation.evaluate import dice


def training_sets(data: Path, crops: int, composed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    pairs = [(read_grey(i), read_mask(m)) for i, m in ddti_pairs(data / "ddti", "train")]
    pairs = [p for p in pairs if p[1].any()]
    random.Random(0).shuffle(pairs)
    rng = np.random.default_rng(4321)
    backgrounds = tg3k_pairs(data / "tg3k", "train")
    frames = []
    for crop, mask in pairs[crops:crops + composed]:
        bg_image, bg_mask = backgrounds[int(rng.integers(len(backgrounds)))]
        frames.append(compose_frame(read_grey(bg_image), read_mask(bg_mask), crop, mask, rng))
    return {"ddti_train_crops": pairs[:crops], "composed_train_frames": frames}


def mean_dice(backend, pairs) -> float:
    scores = []
    for image, truth in pairs:
        found = nodule.segment_nodule(backend, image)
        scores.append(dice(np.zeros(image.shape, bool) if found is None else found.mask, truth))
    return float(np.mean(scores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--crops", type=int, default=100)
    parser.add_argument("--composed", type=int, default=100)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.65, 0.7, 0.75, 0.8])
    args = parser.parse_args()
    backend = OnnxRuntimeBackend(args.model_repository, threads=1)
    sets = training_sets(args.data, args.crops, args.composed)
    rows = []
    for threshold in args.thresholds:
        nodule.MASK_THRESHOLD = threshold
        row = {"threshold": threshold, **{name: round(mean_dice(backend, pairs), 4) for name, pairs in sets.items()}}
        row["mean"] = round(float(np.mean([row[name] for name in sets])), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"best": max(rows, key=lambda r: r["mean"])["threshold"], "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
