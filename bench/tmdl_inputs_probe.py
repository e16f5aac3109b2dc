"""What TMDL's feature images carry for a linear reader, beside what the full-resolution view carries.

TMDL's image groups rank below the structured baseline's geometry (model card, issue 15). Is the
information gone from the 48-pixel feature images (x_l, x_t, x_m), or there and unread? This bench
fits logistic regressions (scikit-learn, standardised inputs, PCA where the inputs are pixels) on the
training studies' views and scores the held-out studies (each study: the mean of its views):

- on the feature images TMDL reads (the given masks, no jitter), each group alone and all three;
- on the ten measurements of the full-resolution view (`llnm.features.measures`: capsule distance,
  length, width, thirds, aspect, echogenicity, heterogeneity, foci, irregularity), the baseline;
- and, per measurement, how much of it a linear read-out of the feature images recovers (R^2 on the
  held-out views) and what the measurements lose without it.

    .venv/bin/python bench/tmdl_inputs_probe.py --train /tmp/fusion/train --test /tmp/fusion/test

A model figure, not a speed. Prints a Markdown table and the figures as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def study_auc(p_view: np.ndarray, view_study: np.ndarray, llnm: np.ndarray) -> float:
    from llnm.model.metrics import auc

    total, count = np.zeros(len(llnm)), np.zeros(len(llnm))
    np.add.at(total, view_study, p_view)
    np.add.at(count, view_study, 1)
    seen = count > 0
    return float(auc(total[seen] / count[seen], llnm[seen]))


def load_caches(train: Path, test: Path, preset_name: str, text_tokens: int, workers: int):
    """The training and held-out feature caches (no jitter: the given masks), and the preset's config."""
    from llnm.config import Settings
    from llnm.model.config import preset
    from llnm.model.data import build_cache
    from llnm.model.train import onnx_text_encoder

    config = preset(preset_name, text_tokens=text_tokens)
    encode = onnx_text_encoder(Settings.from_env().model_repository)
    return config, *(build_cache(d, config, encode, jitters=0, seed=0, progress=False, workers=workers)
                     for d in (train, test))


def pixels(cache, groups: list[int]) -> np.ndarray:
    """Each view's feature images of `groups` (0 x_l, 1 x_t, 2 x_m) as one row; variant 0, the given masks."""
    images = cache.images[:, 0].astype(np.float32)
    return np.concatenate([images[:, g].reshape(len(images), -1) for g in groups], axis=1)


def linear_r2(train, test, components: int) -> np.ndarray:
    """Held-out R^2 of each measurement (`llnm.features.measures`) from a ridge read-out of the three
    feature images, PCA-reduced: what a linear reader of TMDL's image inputs recovers."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    projection = make_pipeline(StandardScaler(), PCA(components, random_state=0))
    z_train = projection.fit_transform(pixels(train, [0, 1, 2]))
    z_test = projection.transform(pixels(test, [0, 1, 2]))
    measured_train, measured_test = train.measures[:, 0], test.measures[:, 0]
    predicted = np.stack([Ridge(1.0).fit(z_train, measured_train[:, j]).predict(z_test)
                          for j in range(measured_train.shape[1])], axis=1)
    return 1 - ((predicted - measured_test) ** 2).mean(axis=0) / measured_test.var(axis=0)


def reader_auc(x_train: np.ndarray, x_test: np.ndarray, train, test, components: int | None = None) -> float:
    """Held-out study AUC of the linear reader: a logistic regression (standardised inputs, PCA to
    `components` where given) fitted on the training views' rows `x_train`, scoring `x_test`."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()] + ([PCA(components, random_state=0)] if components else [])
    model = make_pipeline(*steps, LogisticRegression(C=0.1, max_iter=3000)).fit(x_train, train.llnm[train.view_study])
    return study_auc(model.predict_proba(x_test)[:, 1], test.view_study, test.llnm)


def print_auc_table(title: str, rows: dict[str, float]) -> None:
    print(f"\n| {title} | held-out AUC |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--preset", default="compact")
    parser.add_argument("--text-tokens", type=int, default=150, help="only keys the feature cache")
    parser.add_argument("--components", type=int, default=100, help="PCA components of the pixel inputs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from llnm.features.measures import MEASURES

    _, train, test = load_caches(args.train, args.test, args.preset, args.text_tokens, args.workers)
    rows: dict[str, float] = {}
    for name, groups in (("x_l (CPDT map)", [0]), ("x_t (texture)", [1]), ("x_m (margin mosaic)", [2]),
                         ("x_l, x_t, x_m", [0, 1, 2])):
        rows[f"feature images: {name}"] = reader_auc(pixels(train, groups), pixels(test, groups), train, test,
                                                     args.components)
    measured_train, measured_test = train.measures[:, 0], test.measures[:, 0]
    rows["the ten measurements of the full-resolution view"] = reader_auc(measured_train, measured_test, train, test)

    r2 = linear_r2(train, test, args.components)
    per_measure = {}
    for j, name in enumerate(MEASURES):
        rest = [k for k in range(len(MEASURES)) if k != j]
        per_measure[name] = {"r2_from_feature_images": float(r2[j]),
                             "auc_without_it": reader_auc(measured_train[:, rest], measured_test[:, rest], train, test)}

    print(f"held-out studies: {len(test.llnm)}; training views: {len(train.view_study)}")
    print_auc_table("linear reader on", rows)
    print("\n| measurement | R^2 from the feature images (linear, held out) | the measurements' AUC without it |\n|---|---|---|")
    for name, values in per_measure.items():
        print(f"| {name} | {values['r2_from_feature_images']:+.2f} | {values['auc_without_it']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"readers": rows, "measures": per_measure}, indent=1))


if __name__ == "__main__":
    main()
