"""`llnm ood-fit --train DIR --calibrate DIR`: fit the out-of-distribution check of the shipped TMDL.

The training descriptors come from the training layout's views with their ground-truth masks (what
TMDL was trained on); the threshold from HELD-OUT studies of the same distribution run through the
product (segmentation models and the quality gate), so that at most 1 - quantile of such views
abstain at run time. Writes `model_repository/tmdl/1/ood.json` (llnm.model.ood). Numpy and the
ONNX segmentation models only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from llnm.config import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=Path, required=True, help="the training layout TMDL was trained on")
    parser.add_argument("--calibrate", type=Path, required=True,
                        help="held-out studies of the training distribution (same layout), never trained on")
    parser.add_argument("--quantile", type=float, default=0.96,
                        help="share of held-out views that must pass (default %(default)s)")
    parser.add_argument("--max-train-views", type=int, default=600)
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: LLNM_MODEL_REPOSITORY; the result goes to <it>/tmdl/1/ood.json")


def train_descriptors(data_dir: Path, size: int, limit: int) -> np.ndarray:
    from llnm.features import extract_features
    from llnm.model.data import read_layout, read_png
    from llnm.model.ood import features_descriptor

    out = []
    for study in read_layout(data_dir):
        for view in study.views:
            nodule, gland = read_png(view.nodule_mask) > 127, read_png(view.gland_mask) > 127
            if not nodule.any() or not gland.any():
                continue
            image = read_png(view.image)
            feats = extract_features(image, gland, nodule, view.spacing_mm, size=size)
            out.append(features_descriptor(feats, image, gland))
            if len(out) >= limit:
                return np.array(out)
    return np.array(out)


def product_descriptor(backend, image: np.ndarray, spacing_mm, size: int):
    """(the quality gate's verdict, the view's OOD descriptor or None when the gate declines it): what
    llnm.pipeline computes for one view before TMDL, with the shipped segmentation models."""
    from llnm.features import extract_features
    from llnm.model.ood import features_descriptor
    from llnm.pipeline import default_segmenter
    from llnm.quality import assess_view

    detection, gland = default_segmenter(backend, image)
    nodule = None if detection is None else detection.mask
    quality = assess_view(image, nodule, gland, 0.0 if detection is None else detection.score, spacing_mm)
    if not quality.passed:
        return quality, None
    feats = extract_features(image, gland, nodule, spacing_mm, size=size)
    return quality, features_descriptor(feats, image, gland)


def runtime_descriptors(data_dir: Path, backend, size: int) -> tuple[np.ndarray, int]:
    """Descriptors of the views the product would use (segmentation + gate); and the views seen."""
    from llnm.model.data import read_layout, read_png

    out, seen = [], 0
    for study in read_layout(data_dir):
        for view in study.views:
            seen += 1
            _, descriptor = product_descriptor(backend, read_png(view.image), view.spacing_mm, size)
            if descriptor is not None:
                out.append(descriptor)
    return np.array(out), seen


def run(args: argparse.Namespace) -> int:
    from llnm.inference.backend import create_backend
    from llnm.model.config import preset
    from llnm.model.ood import OOD_FILE, fit

    overrides = {"model_repository": args.model_repository} if args.model_repository else {}
    settings = Settings.from_env(**overrides)
    size = preset(settings.preset).image_size
    backend = create_backend(settings)
    train = train_descriptors(args.train, size, args.max_train_views)
    calibration, seen = runtime_descriptors(args.calibrate, backend, size)
    source = (f"train: {args.train.name} ({len(train)} views, ground-truth masks); calibration: "
              f"{args.calibrate.name} ({len(calibration)} of {seen} views passed the gate, runtime segmentation)")
    model = fit(train, calibration, args.quantile, source)
    target = Path(settings.model_repository) / "tmdl" / "1" / OOD_FILE
    model.save(target)
    print(json.dumps({"written": str(target), "threshold": round(model.threshold, 3), "train_views": len(train),
                      "calibration_views": len(calibration), "views_seen": seen, "quantile": args.quantile}))
    return 0
