"""Choose the quality gate's thresholds (llnm.quality) on the SELECT cases of the real whole frames.

    .venv/bin/python bench/segmentation_gate.py --data ../shared/data --repo model_repository \
        [--phantom /tmp/ph-cal]

Runs the product's path (ultrasound image found, both models) on every ddti_frames frame of the
"select" cases (never the held-out "val" cases) and, optionally, on the views of an `llnm phantom`
folder, records what the gate measures (detector score, nodule inside gland, solidity, area shares)
and the truth (IoU of the index nodule with the outline), then sweeps the three thresholds that
decide most. For each setting: the share of frames declined, the share of BAD masks (IoU < 0.5)
declined, the mean Dice of the frames used, and the phantom views declined. The rule: the setting
that best separates bad masks from good ones (share of bad declined minus share of good declined)
while declining at most 10 % of the real frames (and of phantom views); ties: the stricter
nodule-inside-gland threshold (it protects the capsule distance, which the nodule Dice does not see).
The confidence threshold is swept from the detector's own (nodule.CONF_THRESHOLD) up: below it lie the
unsure detections that the segmentation keeps only so that the gate declines them as "low confidence"
(llnm.segmentation.nodule, FALLBACK_CONF_THRESHOLD); a gate that used them would undo that.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from llnm import quality
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation import nodule
from llnm.segmentation.data import ddti_frame_pairs, read_grey, read_mask
from llnm.segmentation.evaluate import dice, iou, matched_nodule, segment_picture


def measure(backend, image: np.ndarray, truth: np.ndarray) -> dict:
    """What the gate measures on one picture (the product's path: llnm.segmentation.evaluate) and the
    IoU/Dice of the index nodule with the outlined nodule it overlaps most."""
    seg = segment_picture(backend, image)
    q = seg.quality
    target = matched_nodule(seg.nodule, truth)
    return {"codes": list(seg.gate_reasons), "score": seg.nodule_score, "inside": q.nodule_inside_gland,
            "solidity": q.solidity, "iou": iou(seg.nodule, target), "dice": dice(seg.nodule, target)}


def declined(rec: dict, inside: float, score: float, solidity: float) -> bool:
    """The gate with these three thresholds (the other checks as shipped). A good image where simply no
    nodule was found is a finding ("no nodule found"), not a decline: it is counted apart (a miss)."""
    fixed = {quality.LOW_CONFIDENCE, quality.NODULE_OUTSIDE_GLAND, quality.IRREGULAR_MASK}
    if rec["codes"] == [quality.NO_NODULE]:
        return False
    if any(c not in fixed for c in rec["codes"]):
        return True
    if rec["inside"] is not None and rec["inside"] < inside:
        return True
    if rec["score"] < score:
        return True
    return rec["solidity"] is not None and rec["solidity"] < solidity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--phantom", type=Path, default=None)
    parser.add_argument("--max-declined", type=float, default=0.10)
    parser.add_argument("--inside", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                        help="nodule-inside-gland thresholds to sweep (`--inside 0.5`: hold it at the shipped half)")
    args = parser.parse_args(argv)
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    frames = [measure(backend, read_grey(i), read_mask(m))
              for i, m in ddti_frame_pairs(args.data / "ddti_frames", ("select",))]
    phantom = []
    if args.phantom is not None:
        from llnm.model.data import read_layout, read_png

        for study in read_layout(args.phantom):
            for v in study.views:
                phantom.append(measure(backend, read_png(v.image), read_png(v.nodule_mask) > 127))
    rows = []
    scores = [s for s in (0.25, 0.3, 0.35, 0.4, 0.5) if s >= nodule.CONF_THRESHOLD]
    for inside, score, solid in itertools.product(args.inside, scores, (0.0, 0.6, 0.7, 0.8)):
        d = np.array([declined(r, inside, score, solid) for r in frames])
        bad = np.array([r["iou"] < 0.5 for r in frames])
        used_dice = float(np.mean([r["dice"] for r, x in zip(frames, d) if not x])) if (~d).any() else 0.0
        ph = float(np.mean([declined(r, inside, score, solid) for r in phantom])) if phantom else 0.0
        rows.append({"inside": inside, "score": score, "solidity": solid, "declined": float(d.mean()),
                     "bad_declined": float(d[bad].mean()) if bad.any() else None,
                     "good_declined": float(d[~bad].mean()) if (~bad).any() else None,
                     "dice_used": used_dice, "phantom_declined": ph})
    ok = [r for r in rows if r["declined"] <= args.max_declined and r["phantom_declined"] <= args.max_declined]
    fixed_codes = {quality.LOW_CONFIDENCE, quality.NODULE_OUTSIDE_GLAND, quality.IRREGULAR_MASK}
    for name, recs in (("frames", frames), ("phantom", phantom)):
        other: dict[str, int] = {}
        for r in recs:
            for c in r["codes"]:
                if c not in fixed_codes:
                    other[c] = other.get(c, 0) + 1
        print(f"{name}: declined by the checks not swept: {other}")
    if not ok:
        print("no setting declines at most", args.max_declined, "- the least declining:")
        for r in sorted(rows, key=lambda r: max(r["declined"], r["phantom_declined"]))[:8]:
            print(json.dumps(r))
        return 1
    best = max(ok, key=lambda r: (round((r["bad_declined"] or 0) - (r["good_declined"] or 0), 3), r["inside"],
                                  -r["declined"], r["score"], r["solidity"]))
    print(json.dumps({"frames": len(frames), "bad_masks": int(sum(r["iou"] < 0.5 for r in frames)),
                      "frames_no_nodule_found": int(sum(r["codes"] == [quality.NO_NODULE] for r in frames)),
                      "phantom_no_nodule_found": int(sum(r["codes"] == [quality.NO_NODULE] for r in phantom)),
                      "phantom_views": len(phantom), "chosen": best}, indent=1))
    for r in sorted(ok, key=lambda r: -((r["bad_declined"] or 0) - (r["good_declined"] or 0)))[:12]:
        print(json.dumps(r))
    shipped = next(r for r in rows if (r["inside"], r["score"], r["solidity"]) ==
                   (quality.MIN_INSIDE_GLAND, quality.MIN_NODULE_SCORE, quality.MIN_SOLIDITY))
    print("shipped:", json.dumps(shipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
