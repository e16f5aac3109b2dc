"""`llnm ood-fit --source NAME TRAIN_DIR CALIBRATE_DIR ...`: fit the out-of-distribution check of the
shipped TMDL (`--train DIR --calibrate DIR`: one source).

Per training source (e.g. the phantom and real frames, each a training layout): the training
descriptors come from its views with their ground-truth masks (what TMDL was trained on; each distinct
image once, spread over the whole folder, and each again as a device with a smaller matrix would
send it: `--also-reduced`, default SMALLER_MATRICES); the threshold from HELD-OUT studies of the same
source run through the product (segmentation models and the quality gate), pooled with the training
views themselves run through the product, each scored by a Gaussian fitted without its case
(`--cross-fit K` folds, default CROSS_FIT_FOLDS; the case: labels.csv `case`, else the study), so that
at most 1 - quantile of such views abstain at run time. Writes `model_repository/tmdl/1/ood.json`
(llnm.model.ood). Numpy and the ONNX segmentation models only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llnm.config import Settings

if TYPE_CHECKING:
    from llnm.model.config import TMDLConfig

#: training views also enter the fit reduced by these factors: the tissue statistics are measured at a
#: reference size only for views larger than it (llnm.model.ood.reference_scale), and TMDL's answer holds
#: on select frames at 0.6 x (median change of P(LLNM) 0.006), of which the check declined 29 % without them
SMALLER_MATRICES = (0.8,)
#: folds of the cross-fitted calibration (0: the held-out calibration folder alone)
CROSS_FIT_FOLDS = 5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", nargs=3, action="append", default=[], metavar=("NAME", "TRAIN", "CALIBRATE"),
                        help="a training source: its name, the training layout TMDL was trained on and "
                             "held-out studies of it (same layout, never trained on); repeat per source")
    parser.add_argument("--train", type=Path, default=None, help="one source: the training layout")
    parser.add_argument("--calibrate", type=Path, default=None, help="one source: its held-out studies")
    parser.add_argument("--quantile", type=float, default=0.96,
                        help="share of held-out views that must pass (default %(default)s)")
    parser.add_argument("--max-train-views", type=int, default=600)
    parser.add_argument("--also-reduced", type=float, nargs="*", default=list(SMALLER_MATRICES),
                        help="each training view also reduced by these factors, as a device with a smaller "
                             "matrix would send it (default %(default)s; none: no such copies)")
    parser.add_argument("--cross-fit", type=int, default=CROSS_FIT_FOLDS, metavar="K",
                        help="also calibrate on the training views run through the product, each scored by a fit "
                             "without its case, in K folds (default %(default)s; 0: the calibration folder alone)")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: LLNM_MODEL_REPOSITORY; the result goes to <it>/tmdl/1/ood.json")


def study_cases(data_dir: Path) -> dict[str, str]:
    """study_uid -> the patient case it comes from (labels.csv `case`, written by `llnm real-studies`;
    the study itself where the column is absent or empty, as for `llnm phantom`)."""
    import csv

    with (Path(data_dir) / "labels.csv").open(newline="", encoding="utf-8") as fh:
        return {row["study_uid"]: (row.get("case") or "").strip() or row["study_uid"] for row in csv.DictReader(fh)}


def distinct_views(data_dir: Path, limit: int | None = None) -> list[tuple[str, object]]:
    """(case, view) of the folder's views, each distinct image (and masks) once (`llnm real-studies`
    reuses a frame in several studies), at most `limit` of them spread evenly over the folder."""
    import hashlib

    from llnm.model.data import read_layout

    cases = study_cases(data_dir)
    seen, views = set(), []
    for study in read_layout(data_dir):
        for view in study.views:
            key = hashlib.sha256(b"".join(Path(p).read_bytes() for p in (view.image, view.nodule_mask))).digest()
            if key not in seen:
                seen.add(key)
                views.append((cases.get(study.study_uid, study.study_uid), view))
    if limit is not None and len(views) > limit:
        views = [views[int(i)] for i in np.linspace(0, len(views) - 1, limit)]
    return views


def reduced(image: np.ndarray, gland: np.ndarray, nodule: np.ndarray, spacing_mm, scale: float):
    """The view as a device with a `scale` x smaller matrix would send it: the image resized (bilinear,
    Pillow's antialiasing), the masks by nearest neighbour, the calibration coarser by as much."""
    from PIL import Image

    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    gland, nodule = (np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)) > 0
                     for m in (gland, nodule))
    spacing_mm = None if spacing_mm is None else (spacing_mm[0] / scale, spacing_mm[1] / scale)
    return image, gland, nodule, spacing_mm


def train_descriptors(data_dir: Path, config: "TMDLConfig", limit: int,
                      also_reduced: tuple[float, ...] = ()) -> tuple[np.ndarray, list[str]]:
    """Descriptors of the folder's distinct views with their true masks, and of each view `also_reduced`;
    and each one's case."""
    from llnm.features import extract_features
    from llnm.model.data import read_png, read_view_image
    from llnm.model.ood import features_descriptor

    out, cases = [], []
    for case, view in distinct_views(data_dir, limit):
        nodule, gland = read_png(view.nodule_mask) > 127, read_png(view.gland_mask) > 127
        image = read_view_image(view.image)
        for scale in (1.0, *also_reduced):
            img, gl, nod, spacing = (image, gland, nodule, view.spacing_mm) if scale == 1.0 else \
                reduced(image, gland, nodule, view.spacing_mm, scale)
            if nod.any() and gl.any():
                feats = extract_features(img, gl, nod, spacing, **config.feature_options())
                out.append(features_descriptor(feats, img, gl))
                cases.append(case)
    return np.array(out), cases


def product_descriptor(backend, image: np.ndarray, spacing_mm, config: "TMDLConfig"):
    """(the quality gate's verdict, the view's OOD descriptor or None when the gate declines it): what
    llnm.pipeline computes for one view before TMDL (burned-in marks filled in, the shipped segmentation
    models, the gate, the features), by the pipeline's own steps."""
    from llnm.model.ood import features_descriptor
    from llnm.pipeline import default_segmenter, segment_views, without_marks
    from llnm.study import StudyInput, View

    study = without_marks(StudyInput("ood-fit", [View(image, spacing_mm)]))
    (view,), analysable = segment_views(study, backend, default_segmenter, config, [])
    if not analysable:
        return view.quality, None
    return view.quality, features_descriptor(view.features, study.views[0].image, view.gland_mask)


def runtime_descriptors(data_dir: Path, backend, config: "TMDLConfig",
                        limit: int | None = None) -> tuple[np.ndarray, list[str], int]:
    """Descriptors of the views the product would use (segmentation + gate), their cases, and the views
    seen."""
    from llnm.model.data import read_view_image

    out, cases, seen = [], [], 0
    for case, view in distinct_views(data_dir, limit):
        seen += 1
        _, descriptor = product_descriptor(backend, read_view_image(view.image), view.spacing_mm, config)
        if descriptor is not None:
            out.append(descriptor)
            cases.append(case)
    return np.array(out), cases, seen


def run(args: argparse.Namespace) -> int:
    from llnm.inference.backend import create_backend
    from llnm.model.config import served_config
    from llnm.model.ood import OOD_FILE, cross_fitted_distances, fit_sources

    sources = [(name, Path(train), Path(cal)) for name, train, cal in args.source]
    if args.train is not None or args.calibrate is not None:
        if args.train is None or args.calibrate is None:
            raise SystemExit("--train and --calibrate go together (or use --source NAME TRAIN CALIBRATE)")
        sources.append(("train", args.train, args.calibrate))
    if not sources:
        raise SystemExit("give at least one --source NAME TRAIN CALIBRATE (or --train and --calibrate)")
    overrides = {"model_repository": args.model_repository} if args.model_repository else {}
    settings = Settings.from_env(**overrides)
    config = served_config(settings.model_repository, settings.preset)
    backend = create_backend(settings)
    fitted, summary, notes = {}, {}, []
    for name, train_dir, cal_dir in sources:
        train, train_cases = train_descriptors(train_dir, config, args.max_train_views, tuple(args.also_reduced))
        calibration, _, seen = runtime_descriptors(cal_dir, backend, config)
        fitted[name] = (train, calibration)
        summary[name] = {"train_descriptors": len(train), "calibration_views": len(calibration), "views_seen": seen}
        copies = f", each also reduced x {', '.join(f'{f:g}' for f in args.also_reduced)}" if args.also_reduced else ""
        cross = ""
        if args.cross_fit:
            own, own_cases, own_seen = runtime_descriptors(train_dir, backend, config, args.max_train_views)
            fitted[name] = (train, calibration, cross_fitted_distances(train, train_cases, own, own_cases,
                                                                       folds=args.cross_fit))
            summary[name].update(cross_fitted_views=len(own), cross_fit_views_seen=own_seen)
            cross = (f", and {len(own)} of {own_seen} of its training views that passed the gate, runtime "
                     f"segmentation, each scored by a fit without its case ({args.cross_fit} folds)")
        notes.append(f"{name}: train {train_dir.name} ({len(train)} descriptors of distinct views, ground-truth "
                     f"masks{copies}), "
                     f"calibration {cal_dir.name} ({len(calibration)} of {seen} distinct views passed the gate, "
                     f"runtime segmentation{cross})")
    model = fit_sources(fitted, args.quantile, "; ".join(notes))
    for part in model.components:
        summary[part.name]["threshold"] = round(part.threshold, 3)
    target = Path(settings.model_repository) / "tmdl" / "1" / OOD_FILE
    model.save(target)
    print(json.dumps({"written": str(target), "quantile": args.quantile, "sources": summary}))
    return 0
