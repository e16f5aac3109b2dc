"""`llnm evaluate-seg --model {nodule,gland} --images DIR --masks DIR`: Dice/IoU as JSON on stdout.

Images and masks are matched by file stem (png/jpg/gif/...); masks > 127 are foreground. Runs the
shipped ONNX model through the configured inference backend (no torch).
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
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: LLNM_MODEL_REPOSITORY (the shipped model_repository/)")


def run(args: argparse.Namespace) -> int:
    from llnm.inference.backend import create_backend
    from llnm.segmentation.evaluate import evaluate_folder

    overrides = {"model_repository": args.model_repository} if args.model_repository else {}
    backend = create_backend(Settings.from_env(**overrides))
    print(json.dumps(evaluate_folder(backend, args.model, args.images, args.masks), indent=2))
    return 0
