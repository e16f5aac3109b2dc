"""Is a view like the data the shipped TMDL was trained on? An out-of-distribution score and a threshold.

TMDL answers for any input, including ones it never saw the like of (a phantom-trained model on real
scans calls every nodule "high risk"). Before a probability is shown, each analysed view is described
by the statistics of what TMDL actually sees (the texture crop x_t and the margin mosaic x_m as
images: brightness, contrast, speckle grain, gradient energy, the dark share; and the scalar inputs x_e,
x_s) and of the tissue it comes from (the grey levels inside the gland: skewness, coefficient of
variation, speckle correlation at 1 and 3 pixels along rows and columns: a scanner's and a
simulator's speckle differ most there; measured on the view reduced to REFERENCE_SIZE when larger,
since a pixel lag is a length only on one grid) and scored by its Mahalanobis distance to the
training views' descriptors, one Gaussian per training source (the phantom, real frames: a mean and a
shrunk covariance each, `fit_sources`; `llnm ood-fit` adds each training view reduced as a smaller
matrix would send it). Each source's threshold is the `quantile` of the distances of views run through
the product (segmentation masks, not ground truth) that its Gaussian never saw: HELD-OUT views of that
source, pooled with its own training views each scored by a Gaussian fitted without its case
(`cross_fitted_distances`), so at most 1 - quantile of such views abstain; the score is the smallest
distance relative to its source's threshold (1.0: the boundary). A study abstains when every analysed
view is beyond it.

What the descriptor leaves out on purpose: the share of saturated (bright) pixels in x_t. Three real
views in four have none and the rest a few pixels, a spike at zero that a Gaussian models badly: it
made up a quarter of the squared distance of the real training views that the check declined when scored
without their case, and nothing of the distance of the altered images it is meant to catch (model
card, "When the model abstains").

The fitted statistics live beside the model (`model_repository/tmdl/1/ood.json`), written by
`llnm ood-fit`; numpy only at run time, so the worker, `llnm predict` and a Triton-backed worker
decide the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOD_FILE = "ood.json"
DESCRIPTOR = ("xt_mean", "xt_std", "xt_grad", "xt_lag1", "xt_lag3", "xt_dark",
              "xm_mean", "xm_std", "xm_grad", "xm_lag1", "echogenicity", "aspect_ratio",
              "tissue_skew", "tissue_cv", "tissue_lag1_rows", "tissue_lag1_cols", "tissue_lag3_rows",
              "tissue_lag3_cols")
SHRINKAGE = 0.05  # covariance shrunk towards its diagonal: stable with a few hundred views
#: px on a view's longer side at which the tissue statistics are measured (views larger are reduced)
REFERENCE_SIZE = 400
#: pixels along the view's border that the tissue statistics leave out
EDGE = 2


def _lag_correlation(img: np.ndarray, lag: int) -> float:
    """Mean of the row and column autocorrelation at `lag` pixels: the speckle's grain size."""
    x = img.astype(np.float64)
    x = x - x.mean()
    var = float((x * x).mean())
    if var <= 1e-12:
        return 1.0
    rows = float((x[:, lag:] * x[:, :-lag]).mean())
    cols = float((x[lag:, :] * x[:-lag, :]).mean())
    return (rows + cols) / (2 * var)


def _grad(img: np.ndarray) -> float:
    x = img.astype(np.float64)
    return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())


def _axis_correlation(x: np.ndarray, lag: int, axis: int) -> float:
    x = x - x.mean()
    var = float((x * x).mean())
    if var <= 1e-12 or x.shape[axis] <= lag:
        return 1.0
    a = np.take(x, np.arange(lag, x.shape[axis]), axis=axis)
    b = np.take(x, np.arange(0, x.shape[axis] - lag), axis=axis)
    return float((a * b).mean() / var)


def reference_scale(shape: tuple[int, ...]) -> float:
    """The factor that brings a view to REFERENCE_SIZE on its longer side: larger views are reduced,
    smaller ones kept (interpolating up would add the very correlation the statistics measure)."""
    return min(1.0, REFERENCE_SIZE / max(int(shape[0]), int(shape[1]), 1))


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): each output pixel the mean of the input pixels it covers (fractions at its edges)."""
    edges = np.linspace(0.0, float(n_in), n_out + 1)
    start = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(edges[1:, None], start + 1) - np.maximum(edges[:-1, None], start), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def area_resample(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` (H, W) reduced by `scale` (<= 1) by area averaging: what a coarser pixel grid records."""
    x = np.asarray(image, dtype=np.float64)
    if scale >= 1.0:
        return x
    rows, cols = (max(1, round(n * scale)) for n in x.shape)
    return _area_weights(x.shape[0], rows) @ x @ _area_weights(x.shape[1], cols).T


def tissue_statistics(image: np.ndarray, gland: np.ndarray) -> list[float]:
    """Grey-level shape and speckle correlation of the tissue: inside the gland (skewness, coefficient
    of variation) and over the gland's bounding box (correlation at 1 and 3 pixels, rows then columns).

    Measured on the view brought to the reference size (`reference_scale`): a pixel lag is a length
    only on one grid, and a device with a larger matrix records the same speckle over more pixels
    (select frames resized x 2 read as unlike the training data in a third of the views, with TMDL's
    answer unchanged; model card, "Frames of another matrix size"). The view's outer EDGE pixels are
    left out: a gland reaching the image's edge would otherwise bring in the edge of a resized frame,
    a blend of image and background, whose contrast reads as speckle (select frames x 0.6: a third of
    the views out, against a seventh without those pixels)."""
    scale = reference_scale(np.shape(image))
    grey = area_resample(image, scale) / 255.0
    gland = area_resample(np.asarray(gland, dtype=np.float64), scale) >= 0.5
    inner = np.zeros_like(gland)
    inner[EDGE:gland.shape[0] - EDGE, EDGE:gland.shape[1] - EDGE] = True
    gland = gland & inner if (gland & inner).any() else gland
    values = grey[gland] if gland.any() else grey.ravel()
    mean, std = float(values.mean()), float(values.std())
    skew = float(((values - mean) ** 3).mean() / std ** 3) if std > 1e-9 else 0.0
    if gland.any():
        rows, cols = np.flatnonzero(gland.any(axis=1)), np.flatnonzero(gland.any(axis=0))
        box = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    else:
        box = grey
    return [skew, std / max(mean, 1e-3), _axis_correlation(box, 1, 0), _axis_correlation(box, 1, 1),
            _axis_correlation(box, 3, 0), _axis_correlation(box, 3, 1)]


def descriptor(x_t: np.ndarray, x_m: np.ndarray, echogenicity: float, aspect_ratio: float,
               image: np.ndarray, gland: np.ndarray) -> np.ndarray:
    """The view's descriptor (see DESCRIPTOR) from TMDL's own inputs (images in [0, 1]) and the tissue."""
    x_t = np.asarray(x_t, dtype=np.float64)
    x_m = np.asarray(x_m, dtype=np.float64)
    return np.array([
        x_t.mean(), x_t.std(), _grad(x_t), _lag_correlation(x_t, 1), _lag_correlation(x_t, 3),
        float((x_t < 0.05).mean()),
        x_m.mean(), x_m.std(), _grad(x_m), _lag_correlation(x_m, 1),
        float(echogenicity), float(np.log(max(float(aspect_ratio), 1e-3))),
        *tissue_statistics(image, gland),
    ], dtype=np.float64)


def features_descriptor(features, image: np.ndarray, gland: np.ndarray) -> np.ndarray:
    """descriptor() of a view: its llnm.features.NoduleFeatures, its image and gland mask."""
    return descriptor(features.x_t, features.x_m, features.echogenicity, features.aspect_ratio, image, gland)


@dataclass(frozen=True)
class Component:
    """One training source (e.g. the phantom, real frames): mean, inverse covariance and the distance
    that `quantile` of its held-out views stay within."""

    name: str
    mean: np.ndarray
    precision: np.ndarray
    threshold: float

    def distance(self, vector: np.ndarray) -> float:
        d = np.asarray(vector, dtype=np.float64) - self.mean
        return float(np.sqrt(max(d @ self.precision @ d, 0.0)))


@dataclass(frozen=True)
class OodModel:
    """The training distribution as one Gaussian per training source. A view's score is its smallest
    Mahalanobis distance to a source relative to that source's threshold, so 1.0 is the boundary for
    every source (`threshold`): a view like any one source TMDL was trained on is in."""

    components: tuple[Component, ...]
    quantile: float
    source: str  # what it was fitted and calibrated on (data, seeds, counts)

    @property
    def threshold(self) -> float:
        return 1.0

    def distances(self, vector: np.ndarray) -> dict[str, float]:
        """Per source: the Mahalanobis distance relative to its threshold."""
        return {c.name: c.distance(vector) / c.threshold for c in self.components}

    def score(self, vector: np.ndarray) -> float:
        return min(self.distances(vector).values())

    def is_out(self, vector: np.ndarray) -> bool:
        return self.score(vector) > self.threshold

    def to_json(self) -> dict:
        return {"descriptor": list(DESCRIPTOR), "reference_size": REFERENCE_SIZE,
                "quantile": self.quantile, "source": self.source,
                "components": [{"name": c.name, "mean": c.mean.tolist(), "precision": c.precision.tolist(),
                                "threshold": c.threshold} for c in self.components]}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> "OodModel":
        raw = json.loads(Path(path).read_text())
        if raw.get("descriptor") != list(DESCRIPTOR):
            raise ValueError(f"{path}: descriptor {raw.get('descriptor')} is not this version's {list(DESCRIPTOR)}: "
                             "refit with llnm ood-fit")
        if raw.get("reference_size") != REFERENCE_SIZE:
            raise ValueError(f"{path}: tissue statistics measured at {raw.get('reference_size')} px, this version "
                             f"measures them at {REFERENCE_SIZE} px: refit with llnm ood-fit")
        parts = raw.get("components") or [{"name": "train", **{k: raw[k] for k in ("mean", "precision", "threshold")}}]
        return cls(tuple(Component(str(c["name"]), np.asarray(c["mean"]), np.asarray(c["precision"]),
                                   float(c["threshold"])) for c in parts),
                   float(raw["quantile"]), str(raw.get("source", "")))


def gaussian(name: str, train: np.ndarray) -> Component:
    """Mean and shrunk inverse covariance of `train` (n, d), threshold 1 (set by `fit_component`)."""
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or train.shape[0] <= train.shape[1]:
        raise ValueError(f"{name}: need more training views than descriptor entries, got {train.shape}")
    cov = np.cov(train, rowvar=False)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov)) + 1e-9 * np.eye(cov.shape[0])
    return Component(name, train.mean(axis=0), np.linalg.inv(cov), 1.0)


def cross_fitted_distances(train: np.ndarray, train_groups, held: np.ndarray, held_groups,
                           folds: int = 5, seed: int = 0) -> np.ndarray:
    """The distance of each `held` descriptor (the training source's own views run through the product)
    from a Gaussian fitted on `train` without its group (a case, a study): the groups are dealt into
    `folds` folds and each fold scored by the fit on the others.

    Why: the held-out calibration set of one source is small (81 select-case views of real frames), and
    its 96th percentile fell short: held-out val views went beyond it in 8 %, train-case views scored
    this way in 10-12 %. Pooling these distances with it calibrates on every case there is."""
    train, held = np.asarray(train, dtype=np.float64), np.asarray(held, dtype=np.float64)
    train_groups, held_groups = np.asarray(train_groups, dtype=str), np.asarray(held_groups, dtype=str)
    if len(train_groups) != len(train) or len(held_groups) != len(held):
        raise ValueError("one group per descriptor")
    groups = np.random.default_rng(seed).permutation(np.unique(np.concatenate([train_groups, held_groups])))
    if len(groups) < folds:
        raise ValueError(f"cross-fitting in {folds} folds needs at least {folds} groups, got {len(groups)}")
    fold_of = {g: i % folds for i, g in enumerate(groups)}
    train_fold = np.array([fold_of[g] for g in train_groups])
    held_fold = np.array([fold_of[g] for g in held_groups])
    out = np.empty(len(held))
    for fold in range(folds):
        if (held_fold == fold).any():
            part = gaussian("cross-fit", train[train_fold != fold])
            out[held_fold == fold] = [part.distance(v) for v in held[held_fold == fold]]
    return out


def fit_component(name: str, train: np.ndarray, calibration: np.ndarray, quantile: float,
                  cross_fitted: np.ndarray | None = None) -> Component:
    """The Gaussian of `train` (n, d); its threshold at `quantile` of the held-out calibration views'
    distances pooled with `cross_fitted` distances (`cross_fitted_distances`), when given."""
    calibration = np.asarray(calibration, dtype=np.float64)
    if calibration.ndim != 2 or not len(calibration):
        raise ValueError(f"{name}: no held-out calibration views")
    part = gaussian(name, train)
    distances = np.array([part.distance(v) for v in calibration])
    if cross_fitted is not None:
        distances = np.concatenate([distances, np.asarray(cross_fitted, dtype=np.float64)])
    return Component(name, part.mean, part.precision, float(np.quantile(distances, quantile)))


def fit(train: np.ndarray, calibration: np.ndarray, quantile: float = 0.96, source: str = "") -> OodModel:
    """One training source: fit on training descriptors (n, d); the threshold at `quantile` of held-out
    calibration scores."""
    return OodModel((fit_component("train", train, calibration, quantile),), quantile, source)


def fit_sources(sources: dict[str, tuple], quantile: float = 0.96, source: str = "") -> OodModel:
    """Several training sources, {name: (training descriptors, held-out calibration descriptors[,
    cross-fitted distances])}: one Gaussian and threshold each, so at most 1 - quantile of each source's
    held-out views abstain."""
    return OodModel(tuple(fit_component(name, *parts[:2], quantile, *parts[2:]) for name, parts in sources.items()),
                    quantile, source)


def load_for_repository(model_repository: Path) -> OodModel | None:
    """The OOD statistics shipped beside the TMDL model, or None when the repository has none."""
    path = Path(model_repository) / "tmdl" / "1" / OOD_FILE
    return OodModel.load(path) if path.is_file() else None
