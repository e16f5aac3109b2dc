"""Evaluation metrics with the paper's protocol (numpy only).

AUC is computed from probabilities (Mann-Whitney), never from thresholded labels. Sensitivity,
specificity, accuracy, PPV and NPV use a threshold fixed beforehand (chosen on the validation split
by Youden's J during training). 95 % CIs: percentile bootstrap over studies, or over patients when
a set holds several studies per patient (`groups`), so that repeated images do not narrow the CI.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when a class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold that maximises sensitivity + specificity - 1."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return 0.5
    best, best_t = -1.0, 0.5
    for t in np.unique(scores):
        pred = scores >= t
        j = pred[labels].mean() + (~pred[~labels]).mean() - 1.0
        if j > best:
            best, best_t = j, float(t)
    return best_t


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = float((pred & labels).sum())
    tn = float((~pred & ~labels).sum())
    fp = float((pred & ~labels).sum())
    fn = float((~pred & labels).sum())
    return {"sensitivity": _safe_div(tp, tp + fn), "specificity": _safe_div(tn, tn + fp),
            "accuracy": _safe_div(tp + tn, len(labels)), "ppv": _safe_div(tp, tp + fp),
            "npv": _safe_div(tn, tn + fn)}


def risk_auc(risk_probabilities: np.ndarray, risk_level: np.ndarray) -> float:
    """Macro one-vs-rest AUC of the 3-level risk (levels 1..3) over the levels present."""
    values = [auc(risk_probabilities[:, k], risk_level == k + 1)
              for k in range(risk_probabilities.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def all_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    return {"auc": auc(scores, labels), **threshold_metrics(scores, labels, threshold)}


def resample(rng: np.random.Generator, m: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Indices of one bootstrap sample of m items: items drawn with replacement, or whole groups
    (a group id per item) drawn with replacement."""
    if groups is None:
        return rng.integers(0, m, m)
    ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    return np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, threshold: float, n: int = 1000,
                 seed: int = 0, extra: tuple[np.ndarray, np.ndarray] | None = None,
                 groups: np.ndarray | None = None) -> dict[str, list[float]]:
    """95 % percentile CIs of every metric (and of the risk AUC when `extra` = (risk_probs, levels));
    `groups` (one id per study, e.g. the patient): resample patients, not studies."""
    rng = np.random.default_rng(seed)
    m = len(labels)
    samples: dict[str, list[float]] = {}
    for _ in range(n):
        idx = resample(rng, m, groups)
        values = all_metrics(scores[idx], labels[idx], threshold)
        if extra is not None:
            values["risk_auc"] = risk_auc(extra[0][idx], extra[1][idx])
        for k, v in values.items():
            samples.setdefault(k, []).append(v)
    return {k: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] for k, v in samples.items()}


def calibration_curve(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted vs observed frequency in equal-width probability bins (empty bins left out)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    predicted, observed, counts = [], [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            predicted.append(float(scores[sel].mean()))
            observed.append(float(np.asarray(labels)[sel].mean()))
            counts.append(int(sel.sum()))
    brier = float(np.mean((scores - labels) ** 2))
    return {"predicted": predicted, "observed": observed, "count": counts, "brier": brier}


def decision_curve(scores: np.ndarray, labels: np.ndarray,
                   thresholds: np.ndarray | None = None) -> dict[str, list[float]]:
    """Net benefit (Vickers & Elkin 2006) of the model, of treating all and of treating none."""
    thresholds = np.linspace(0.01, 0.8, 80) if thresholds is None else thresholds
    labels = np.asarray(labels).astype(bool)
    n = len(labels)
    prevalence = labels.mean()
    model, treat_all = [], []
    for t in thresholds:
        pred = scores >= t
        tp = (pred & labels).sum() / n
        fp = (pred & ~labels).sum() / n
        w = t / (1.0 - t)
        model.append(float(tp - fp * w))
        treat_all.append(float(prevalence - (1.0 - prevalence) * w))
    return {"threshold": [float(t) for t in thresholds], "model": model, "treat_all": treat_all,
            "treat_none": [0.0] * len(thresholds)}
