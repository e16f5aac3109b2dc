"""Evaluation of a trained TMDL on a folder in the training layout, with the paper's protocol:
study-level predictions (views averaged), AUC from probabilities, sensitivity / specificity /
accuracy / PPV / NPV at the threshold fixed on the validation split, 95 % bootstrap CIs, the
3-level risk AUC, a calibration curve and a decision curve; JSON + PNG plots in an HTML report.
When labels.csv has p_true (phantom studies) the Bayes-optimal AUC of the set is reported too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from llnm.model.data import build_cache
from llnm.model.metrics import (all_metrics, auc, bootstrap_ci, calibration_curve, decision_curve,
                                risk_auc)
from llnm.model.train import load_model, predict_studies


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.concatenate([[0], np.cumsum(labels[order])]) / max(labels.sum(), 1)
    fp = np.concatenate([[0], np.cumsum(~labels[order])]) / max((~labels).sum(), 1)
    return fp, tp


def _plots(out_dir: Path, p: np.ndarray, y: np.ndarray, p_true: np.ndarray | None,
           calibration: dict, decision: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr = roc_points(p, y)
    ax.plot(fpr, tpr, label=f"TMDL (AUC {auc(p, y):.3f})")
    if p_true is not None:
        fpr, tpr = roc_points(p_true, y)
        ax.plot(fpr, tpr, "--", label=f"Bayes-optimal p_true (AUC {auc(p_true, y):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=110)
    names.append("roc.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(calibration["predicted"], calibration["observed"], "o-", label="TMDL")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed frequency",
           title=f"Calibration (Brier {calibration['brier']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "calibration.png", dpi=110)
    names.append("calibration.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(decision["threshold"], decision["model"], label="TMDL")
    ax.plot(decision["threshold"], decision["treat_all"], "--", label="treat all")
    ax.plot(decision["threshold"], decision["treat_none"], ":", label="treat none")
    top = max(max(decision["model"]), max(decision["treat_all"]), 0.01)
    ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve",
           ylim=(-0.05, top * 1.1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "decision_curve.png", dpi=110)
    names.append("decision_curve.png")
    plt.close(fig)
    return names


def _html(report: dict, images: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td><td>{report['ci95'].get(k, [np.nan, np.nan])[0]:.3f}"
        f" - {report['ci95'].get(k, [np.nan, np.nan])[1]:.3f}</td></tr>"
        for k, v in report["metrics"].items())
    extra = ""
    if report.get("bayes_auc") is not None:
        extra = (f"<p>Bayes-optimal AUC of this set (p_true vs llnm): {report['bayes_auc']:.3f}; "
                 f"model / Bayes-optimal: {report['auc_ratio_to_bayes']:.3f}</p>")
    figures = "".join(f'<img src="{name}" alt="{name}">' for name in images)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLNM TMDL evaluation</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px}}</style></head><body>"
            f"<h1>TMDL evaluation</h1><p>Research use only, not for diagnosis.</p>"
            f"<p>model: {html.escape(report['model'])}<br>data: {html.escape(report['data'])}<br>"
            f"studies: {report['studies']} (positives {report['positives']}); threshold "
            f"{report['threshold']:.3f} (fixed on the validation split)</p>{extra}"
            f"<table><tr><th>metric</th><th>value</th><th>95% CI (bootstrap, {report['bootstrap']})</th></tr>"
            f"{rows}</table>{figures}</body></html>")


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path, *, encode_text, bootstrap: int = 1000,
             seed: int = 0, progress: bool = True) -> dict:
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_model(model_dir)
    cache = build_cache(data_dir, model.config, encode_text, jitters=0, seed=seed, progress=progress)
    present, p, risk = predict_studies(model, cache)
    y = cache.llnm[present]
    levels = cache.risk_level[present]
    threshold = float(meta.get("threshold", 0.5))
    metrics = all_metrics(p, y, threshold)
    metrics["risk_auc"] = risk_auc(risk, levels)
    p_true = cache.p_true[present]
    has_truth = bool(np.isfinite(p_true).all())
    calibration = calibration_curve(p, y)
    decision = decision_curve(p, y)
    report = {
        "model": str(model_dir), "data": str(data_dir), "preset": model.config.name,
        "studies": int(len(y)), "positives": int(y.sum()), "threshold": threshold,
        "metrics": metrics,
        "ci95": bootstrap_ci(p, y, threshold, n=bootstrap, seed=seed, extra=(risk, levels)),
        "bootstrap": bootstrap, "calibration": calibration, "decision_curve": decision,
        "bayes_auc": auc(p_true, y) if has_truth else None,
    }
    report["auc_ratio_to_bayes"] = (metrics["auc"] / report["bayes_auc"]) if has_truth else None
    images = _plots(out_dir, p, y, p_true if has_truth else None, calibration, decision)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.html").write_text(_html(report, images))
    predictions = [{"study_uid": cache.study_uids[s], "probability": float(pp), "llnm": int(yy),
                    "risk_probabilities": [float(r) for r in rr]} for s, pp, yy, rr in zip(present, p, y, risk)]
    (out_dir / "predictions.json").write_text(json.dumps(predictions) + "\n")
    return report
