"""`llnm evaluate-seg --model {nodule,gland} --images DIR --masks DIR`: segmentation figures as JSON.

Images and masks are matched by file stem (png/jpg/gif/...); masks > 127 are foreground. Runs the
shipped ONNX models through the configured inference backend (no torch), on the product's path: the
ultrasound image is found in each picture, both models run, the quality gate judges the view.
Reports Dice/IoU, the detection rate (IoU >= 0.5), Dice of the detected, the share the gate would
decline and why, and with `--model gland --nodule-masks DIR` the share of each true nodule that the
predicted gland covers (the whole-frame measure of a gland model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llnm.config import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["nodule", "gland"], required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--nodule-masks", type=Path, default=None,
                        help="gland model: same-named nodule masks, for the nodule-inside-gland share")
    parser.add_argument("--no-region", action="store_true",
                        help="segment the whole picture (do not look for the ultrasound image in it first)")
    parser.add_argument("--per-image", type=Path, default=None, help="also write one JSON line per image here")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: LLNM_MODEL_REPOSITORY (the shipped model_repository/)")


def run(args: argparse.Namespace) -> int:
    from llnm.inference.backend import create_backend
    from llnm.segmentation.data import paired_files
    from llnm.segmentation.evaluate import evaluate_pairs, summarise

    overrides = {"model_repository": args.model_repository} if args.model_repository else {}
    backend = create_backend(Settings.from_env(**overrides))
    pairs = paired_files(args.images, args.masks)
    if not pairs:
        raise SystemExit(f"no image in {args.images} has a same-named mask in {args.masks}")
    records = evaluate_pairs(backend, args.model, pairs, args.nodule_masks, region=not args.no_region)
    if args.per_image is not None:
        args.per_image.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(json.dumps(summarise(args.model, records), indent=2))
    return 0
