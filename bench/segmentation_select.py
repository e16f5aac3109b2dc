"""Choose the nodule post-processing on the SELECT cases (never the held-out ones): the mask threshold,
the box margin, the index nodule's relative score, the opening that removes the box artefact, and the
share of the side the second pair of views fills (`--fills`; 1.0 repeats the frame: the frame and its
mirror image alone, as before the smaller pair).

    .venv/bin/python bench/segmentation_select.py --data ../shared/data --repo model_repository

For each (MASK_THRESHOLD, BOX_MARGIN, RELATIVE_SCORE, OPEN_FRACTION, SMALL_FILL) of llnm.segmentation.nodule: mean nodule Dice on the whole
frames of the "select" cases (product path: ultrasound image found) and on the DDTI crops of the same
cases; the rule is the best mean of the two (whole frames are where the product runs, crops keep
small-field views honest).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation import nodule
from llnm.segmentation.data import case_split, ddti_frame_pairs, paired_files
from llnm.segmentation.evaluate import evaluate_pairs, summarise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.15, 0.3])
    parser.add_argument("--relative", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    parser.add_argument("--opening", type=float, nargs="+", default=[0.0, 0.2, 0.35])
    parser.add_argument("--fills", type=float, nargs="+", default=[nodule.SMALL_FILL])
    args = parser.parse_args(argv)
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    frames = ddti_frame_pairs(args.data / "ddti_frames", ("select",))
    crops = [p for p in paired_files(args.data / "ddti" / "cropped", args.data / "ddti" / "mask")
             if case_split(p[0].name) == "select"]
    rows = []
    for threshold, margin, relative, opening, fill in itertools.product(args.thresholds, args.margins, args.relative,
                                                                        args.opening, args.fills):
        nodule.MASK_THRESHOLD, nodule.BOX_MARGIN, nodule.RELATIVE_SCORE = threshold, margin, relative
        nodule.OPEN_FRACTION, nodule.SMALL_FILL = opening, fill
        f = summarise("nodule", evaluate_pairs(backend, "nodule", frames))
        c = summarise("nodule", evaluate_pairs(backend, "nodule", crops))
        rows.append({"threshold": threshold, "margin": margin, "relative_score": relative,
                     "open_fraction": opening, "small_fill": fill,
                     "frames_dice": round(f["mean_dice"], 4), "frames_iou50": round(f["detection_rate_iou50"], 4),
                     "crops_dice": round(c["mean_dice"], 4), "mean": round((f["mean_dice"] + c["mean_dice"]) / 2, 4)})
        print(json.dumps(rows[-1]), flush=True)
    print("chosen:", json.dumps(max(rows, key=lambda r: r["mean"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
