"""Segmentation on real whole frames, held out by case, beside the crops and TG3K: the model card's table.

    .venv/bin/python bench/segmentation_frames.py --data ../shared/data --split val \
        --repos model_repository /tmp/old_model_repository --out runs/seg-frames

For each model repository (the first is the candidate, the others are baselines measured in the same
run), through the product's path (`llnm.segmentation.evaluate.segment_picture`: ultrasound image found,
both models, quality gate):
- ddti_frames of the chosen case split (`val`: held out, never used to choose anything; `select`:
  where epochs, thresholds and the gate were chosen): nodule Dice (mean), share of frames with
  IoU >= 0.5, Dice of the detected, the share of each true nodule inside the predicted gland
  (median), the gate's declines; 95 % CIs by bootstrap over CASES (frames of a case move together);
- DDTI crops of the same cases (nodule Dice) and TG3K val (gland Dice), the old figures' sets.
A simple baseline sits beside the models: the "centre ellipse" (an ellipse filling the middle third of
the ultrasound image) as nodule and the whole ultrasound image as gland.

`--overlays N` also draws, for the first repository, the N best and N worst frames by nodule Dice and
every frame the gate declines, into OUT/overlays-<split>/ (green: the outlined nodule; red: the
predicted nodule; blue: the predicted gland): the failure modes of the model card. They show frames
of the data set, so they stay in the output folder and never go into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation import nodule
from llnm.segmentation.data import case_split, ddti_case, ddti_frame_pairs, paired_files, read_grey, read_mask, tg3k_pairs
from llnm.segmentation.evaluate import dice, evaluate_pairs, iou, segment_picture, summarise
from llnm.segmentation.region import find_image_region


def bootstrap_by_case(records: list[dict], stat, rounds: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """stat(records) and its 95 % percentile interval, resampling cases with replacement."""
    by_case: dict[str, list[dict]] = {}
    for r in records:
        by_case.setdefault(ddti_case(r["name"]), []).append(r)
    cases = sorted(by_case)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        picked = [r for k in rng.integers(0, len(cases), len(cases)) for r in by_case[cases[int(k)]]]
        v = stat(picked)
        if v is not None:
            values.append(v)
    if not values:
        return stat(records), None, None
    return stat(records), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _mean(key):
    return lambda rs: float(np.mean([r[key] for r in rs])) if rs else None


def _hit_rate(rs):
    pos = [r for r in rs if not r["truth_empty"]]
    return sum(r["iou"] >= 0.5 for r in pos) / len(pos) if pos else None


def _dice_detected(rs):
    hits = [r["dice"] for r in rs if not r["truth_empty"] and r["iou"] >= 0.5]
    return float(np.mean(hits)) if hits else None


def _inside_median(rs):
    vals = [r["nodule_inside_gland"] for r in rs if r["nodule_inside_gland"] is not None]
    return float(np.median(vals)) if vals else None


def _declined(rs):
    return sum(bool(r["gate"]) for r in rs) / len(rs) if rs else None


def _used_dice(rs):
    used = [r["dice"] for r in rs if not r["gate"]]
    return float(np.mean(used)) if used else None


STATS = {"nodule_dice": _mean("dice"), "iou50_rate": _hit_rate, "dice_of_detected": _dice_detected,
         "nodule_inside_gland_median": _inside_median, "gate_declined": _declined,
         "nodule_dice_of_used": _used_dice}


def baseline_records(pairs) -> list[dict]:
    """The simple baseline: centre ellipse as the nodule, the whole ultrasound image as the gland."""
    out = []
    for image_path, mask_path in pairs:
        image, truth = read_grey(image_path), read_mask(mask_path)
        region = find_image_region(image)
        h, w = region.shape
        rr, cc = np.ogrid[:h, :w]
        ellipse = ((rr - h / 2) / (h / 6)) ** 2 + ((cc - w / 2) / (w / 6)) ** 2 <= 1
        nodule = region.paste(ellipse, image.shape)
        gland = region.paste(np.ones((h, w), bool), image.shape)
        out.append({"name": image_path.stem, "dice": dice(nodule, truth), "iou": iou(nodule, truth),
                    "empty": False, "truth_empty": not truth.any(), "score": 1.0, "gate": [],
                    "nodule_inside_gland": float((gland & truth).sum() / truth.sum()) if truth.any() else None})
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def write_overlays(backend, pairs, records: list[dict], count: int, folder: Path) -> int:
    """Overlays of the `count` best and worst frames by Dice and of every declined frame; returns how many."""
    from PIL import Image

    by_name = {p.stem: (p, m) for p, m in pairs}
    ranked = sorted((r for r in records if not r["truth_empty"]), key=lambda r: r["dice"])
    chosen = {r["name"]: r for r in ranked[:count] + ranked[-count:] + [r for r in records if r["gate"]]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, record in chosen.items():
        image_path, mask_path = by_name[name]
        image, truth = read_grey(image_path), read_mask(mask_path)
        seg = segment_picture(backend, image)
        rgb = np.repeat(image[..., None], 3, axis=2)
        for mask, colour in ((seg.gland, (60, 120, 255)), (truth, (0, 220, 0)), (seg.nodule, (255, 40, 40))):
            rgb[_outline(mask)] = colour
        gate = "-".join(record["gate"]) or "used"
        Image.fromarray(rgb).save(folder / f"{record['dice']:.2f}_{name}_{gate}.png")
    return len(chosen)


def nodule_input_size(repo: Path) -> int:
    """The input side of the repository's nodule model, read from its ONNX graph."""
    import onnx

    dims = onnx.load(str(repo / "nodule_seg" / "1" / "model.onnx"), load_external_data=False).graph.input[0]
    return int(dims.type.tensor_type.shape.dim[2].dim_value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--split", choices=["val", "select"], default="val")
    parser.add_argument("--repos", type=Path, nargs="+", default=[Path("model_repository")])
    parser.add_argument("--out", type=Path, default=Path("runs/seg-frames"))
    parser.add_argument("--skip-crops", action="store_true", help="whole frames only (faster)")
    parser.add_argument("--overlays", type=int, default=0, metavar="N",
                        help="draw the N best and N worst frames and every declined one (first repository)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    frames = ddti_frame_pairs(args.data / "ddti_frames", (args.split,))
    crops = [p for p in paired_files(args.data / "ddti" / "cropped", args.data / "ddti" / "mask")
             if case_split(p[0].name) == args.split]
    tg3k = tg3k_pairs(args.data / "tg3k", "val")
    table = {}
    sources = [(str(r), r) for r in args.repos] + [("baseline: centre ellipse + whole image", None)]
    for label, repo in sources:
        row: dict = {"frames": len(frames), "cases": len({ddti_case(p.name) for p, _ in frames})}
        if repo is None:
            records = baseline_records(frames)
        else:
            backend = OnnxRuntimeBackend(repo, threads=1)
            nodule.INPUT_SIZE = nodule_input_size(repo)  # a baseline repository may hold a model of another size
            records = evaluate_pairs(backend, "nodule", frames)
            (args.out / f"frames-{args.split}-{repo.name or 'repo'}-{abs(hash(str(repo))) % 10000}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in records))
            row["gate_reasons"] = summarise("nodule", records)["gate_reasons"]
            if args.overlays and repo == args.repos[0]:
                row["overlays"] = write_overlays(backend, frames, records, args.overlays,
                                                 args.out / f"overlays-{args.split}")
            if not args.skip_crops:
                row["crops_nodule_dice"] = summarise("nodule", evaluate_pairs(backend, "nodule", crops))["mean_dice"]
                row["tg3k_val_gland_dice"] = summarise("gland", evaluate_pairs(backend, "gland", tg3k))["mean_dice"]
        for name, stat in STATS.items():
            value = bootstrap_by_case(records, stat)
            row[name] = [round(v, 3) for v in value]
        table[label] = row
        print(json.dumps({label: row}), flush=True)
    (args.out / f"summary-{args.split}.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
