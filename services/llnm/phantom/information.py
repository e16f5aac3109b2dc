"""How much of a profile's true risk each input can carry, measured on latent draws (no pixels).

`information_aucs` draws findings, the report and the label exactly as `generate_study` does (same
streams), then fits a logistic model (cross-fitted, two folds) on three views of each study:

- report: what the written report states (its noisy descriptors, as parsed into `Report.reported`, the
  density words, the composition it always names) + age and sex;
- image: the LATENT values of everything drawn into the pixels (capsule distance, extrathyroidal
  extension, lobe third, size, margin, spiculation, echogenicity, calcification and foci density,
  heterogeneity, composition) + age and sex: an upper bound of what any image model can extract;
- all: both.

With the Bayes-optimal AUC (AUC of p_true against the labels) this shows a benchmark tests fusion:
report-only and image-only stay clearly below all. Only for a latent-risk profile (fusion).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import risk
from .findings import ECHOES, Findings, draw_findings, draw_fusion_findings
from .profiles import PhantomProfile, get_profile
from .report import Report, write_report


def latent_draw(seed: int, index: int, profile: PhantomProfile) -> tuple[Findings, Report, float, int]:
    """Study `index`'s findings, report, p_true and label without rendering: the streams of
    generate_study, with the latent anatomy standing in for what the images realise."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(8)]
    f = draw_fusion_findings(draw_findings(streams[0]), np.random.default_rng([int(seed), int(index), 23]))
    report = write_report(f, 0.0 if f.ete else f.capsule_target_mm, f.ete, f.vertical, f.horizontal, streams[6],
                          profile.report)
    p = risk.fusion_p_true(f)
    return f, report, p, risk.draw_outcome(p, streams[7])[0]


def _onehot(prefix: str, value: str, levels: tuple[str, ...]) -> dict[str, float]:
    return {f"{prefix}{v}": float(value == v) for v in levels}


def demographic_features(f: Findings) -> dict[str, float]:
    return {"male": float(f.sex == "M"), "age": (f.age - 45.0) / 10.0}


def report_features(f: Findings, report: Report) -> dict[str, float]:
    """What the report text states (never the latent truth, except the composition it always names)."""
    r = report.reported
    text = report.text
    x = {"micro": float(r["microcalcification"]), "ete": float(r["ete"]), "abuts": float(r["abuts_capsule"]),
         "near": float(r["near_capsule"]), "taller": float(r["taller_than_wide"]),
         "central_node": float(r["central_node"]), "tirads": float(r["tirads"]),
         "log2_size": math.log2(max(float(r.get("size_mm", f.size_mm)), 1.0) / 10.0),
         "innumerable": float("Innumerable punctate" in text), "few_foci": float("A few punctate" in text),
         "no_impression": float(not report.impression)}
    x |= _onehot("echo_", r["echogenicity"], ECHOES[:1] + ECHOES[2:])
    x |= _onehot("margin_", r["margin"], ("ill-defined", "lobulated", "irregular"))
    x |= _onehot("foci_", r["foci"], ("macro", "rim", "comet"))
    x |= _onehot("vasc_", r["vascularity"], ("internal", "peripheral", "not stated"))
    x |= _onehot("third_", r["third"], ("upper", "middle"))
    x |= _onehot("comp_", f.composition, ("mostly-solid", "mixed"))
    return x


def image_features(f: Findings) -> dict[str, float]:
    """The latent values of everything the pixels show (none of the report-only facts)."""
    x = {"near": float(f.ete or f.capsule_target_mm < 2.5), "touching": float(f.ete or f.capsule_target_mm < 0.5),
         "ete": float(f.ete), "log2_size": math.log2(f.size_mm / 10.0), "spiculation": float(f.spiculation or 0.0),
         "log2_1p_foci": math.log2(1.0 + (f.foci_per_cm2 or 0.0)), "heterogeneity": float(f.heterogeneity or 0.0)}
    x |= _onehot("third_", f.vertical, ("upper", "middle"))
    x |= _onehot("margin_", f.margin, ("ill-defined", "lobulated", "irregular"))
    x |= _onehot("echo_", f.echogenicity, ECHOES[:1] + ECHOES[2:])
    x |= _onehot("calc_", f.calcification, ("micro", "macro", "rim"))
    x |= _onehot("comp_", f.composition, ("mostly-solid", "mixed"))
    return x


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iterations: int = 50) -> np.ndarray:
    """Ridge-penalised logistic regression by Newton steps on standardised columns; returns a function's
    coefficients for [1, standardised x] (intercept unpenalised). Small and dependency-free."""
    n, k = x.shape
    a = np.hstack([np.ones((n, 1)), x])
    w = np.zeros(k + 1)
    penalty = np.full(k + 1, ridge * n)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ w, -30, 30)))
        grad = a.T @ (p - y) + penalty * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def logistic_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Logits of `x_test` under `fit_logistic` fitted on (x_train, y_train), columns standardised on x_train."""
    mean, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-9
    w = fit_logistic((x_train - mean) / sd, np.asarray(y_train, dtype=float))
    return np.hstack([np.ones((len(x_test), 1)), (x_test - mean) / sd]) @ w


def crossfit_auc(x: np.ndarray, y: np.ndarray, folds: int = 2) -> float:
    """AUC of out-of-fold logistic scores: what the best logistic model on these inputs generalises to."""
    idx = np.arange(len(y)) % folds
    scores = np.zeros(len(y))
    for k in range(folds):
        train, test = idx != k, idx == k
        scores[test] = logistic_scores(x[train], y[train], x[test])
    return risk.auc(scores, y)


def information_aucs(profile: str | PhantomProfile = "fusion", n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Bayes-optimal AUC, prevalence and the cross-fitted AUC of report-only, image-only and all
    inputs over `n` latent draws of `profile` (which must have a latent risk)."""
    prof = get_profile(profile)
    if not prof.latent_risk:
        raise ValueError(f"profile {prof.name!r} has no latent risk model; information_aucs needs one")
    rows = [latent_draw(seed, i, prof) for i in range(n)]
    y = np.array([label for *_, label in rows])
    p = np.array([prob for _, _, prob, _ in rows])

    def matrix(build) -> np.ndarray:
        dicts = [build(f, rep) for f, rep, _, _ in rows]
        keys = sorted(dicts[0])
        return np.array([[d[k] for k in keys] for d in dicts], dtype=float)

    demo = matrix(lambda f, _: demographic_features(f))
    rep = matrix(report_features)
    img = matrix(lambda f, _: image_features(f))
    return {"profile": prof.name, "n": n, "seed": seed, "prevalence": round(float(y.mean()), 4),
            "bayes_auc": round(risk.auc(p, y), 4),
            "report_only_auc": round(crossfit_auc(np.hstack([rep, demo]), y), 4),
            "image_only_auc": round(crossfit_auc(np.hstack([img, demo]), y), 4),
            "all_auc": round(crossfit_auc(np.hstack([rep, img, demo]), y), 4)}
