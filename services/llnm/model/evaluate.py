"""Evaluation of a trained TMDL on a folder in the training layout, with the paper's protocol:
study-level predictions (views averaged, or fused before the head for view_fusion="pooled"), AUC
from probabilities, sensitivity / specificity / accuracy / PPV / NPV at the threshold fixed on the
validation split, 95 % bootstrap CIs, the 3-level risk AUC, a calibration curve and a decision
curve; JSON + PNG plots in an HTML report. When labels.csv has p_true (phantom studies) the
Bayes-optimal AUC of the set is reported too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from llnm.model.data import build_cache
from llnm.model.metrics import (all_metrics, auc, bootstrap_ci, calibration_curve, decision_curve, resample,
                                risk_auc, threshold_metrics)
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


def explain_examples(model, data_dir: Path, out_path: Path, count: int = 4, encode_text=None) -> None:
    """First view of the first `count` positive studies: the image with the masks' outlines, the
    attention rollout (what the runtime reports) and Grad-CAM++ on the image embedding, with the
    study's report when `encode_text` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from scipy import ndimage

    from llnm.features import clinical_vector, extract_features
    from llnm.features.heatmap import tokens_to_heatmap
    from llnm.model.data import orientation_code, read_layout, read_png, read_view_image
    from llnm.model.explain import grad_cam_pp
    from llnm.model.tmdl import attention_rollout

    studies = [s for s in read_layout(data_dir) if s.llnm][:count]
    fig, axes = plt.subplots(len(studies), 3, figsize=(9, 2.6 * len(studies)), squeeze=False)
    for row, study in enumerate(studies):
        if encode_text is not None:
            states, mask = (torch.from_numpy(a) for a in encode_text([study.report], model.config.text_tokens))
        else:
            states = torch.zeros(1, model.config.text_tokens, model.config.text_dim)
            mask = torch.zeros(1, model.config.text_tokens)
        view = study.views[0]
        image = read_view_image(view.image)
        gland, nodule = read_png(view.gland_mask) > 127, read_png(view.nodule_mask) > 127
        feats = extract_features(image, gland, nodule, view.spacing_mm, **model.config.feature_options())
        images = torch.from_numpy(feats.images())[None]
        clinical = torch.from_numpy(clinical_vector(study.sex, study.age, feats, model.config.shape_input,
                                                           model.config.location_input))[None]
        orientation = torch.tensor([orientation_code(view.orientation)])  # read by pooled fusion only
        with torch.no_grad():
            _, _, attentions, token_mask = model(images, states, mask, clinical, return_attention=True,
                                                 orientation=orientation)
        rollout = attention_rollout(attentions, token_mask, model.config.image_tokens)[0].numpy()
        cam = grad_cam_pp(model, images, states, mask, clinical)[0].numpy()
        outline = (gland ^ ndimage.binary_erosion(gland)) | (nodule ^ ndimage.binary_erosion(nodule))
        base = np.stack([image] * 3, axis=-1).copy()
        base[outline] = (255, 200, 0)
        for col, (title, heat) in enumerate((("image, masks", None), ("attention rollout", rollout),
                                             ("Grad-CAM++", cam))):
            ax = axes[row, col]
            ax.imshow(base)
            if heat is not None:
                ax.imshow(tokens_to_heatmap(heat, feats, image.shape), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(title if row == 0 else "", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def atlas_auc(model_dir: Path, data_dir: Path, max_studies: int) -> dict | None:
    """AUC of the Eq. 15 atlas location risk alone (views averaged) on the first studies of the set."""
    from llnm.model.atlas import LocationAtlas, location_risk
    from llnm.model.data import read_layout, read_png

    path = Path(model_dir) / "atlas.npz"
    if not path.is_file() or max_studies <= 0:
        return None
    atlas = LocationAtlas.load(path)
    scores, labels = [], []
    for study in read_layout(data_dir)[:max_studies]:
        risks = [location_risk(atlas, read_png(v.gland_mask) > 127, read_png(v.nodule_mask) > 127, v.orientation)
                 for v in study.views]
        scores.append(float(np.mean(risks)))
        labels.append(study.llnm)
    return {"studies": len(labels), "auc": auc(np.array(scores), np.array(labels))}


def _html(report: dict, images: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td><td>{report['ci95'].get(k, [np.nan, np.nan])[0]:.3f}"
        f" - {report['ci95'].get(k, [np.nan, np.nan])[1]:.3f}</td></tr>"
        for k, v in report["metrics"].items())
    extra = ""
    if report.get("bayes_auc") is not None:
        extra = (f"<p>Bayes-optimal AUC of this set (p_true vs llnm): {report['bayes_auc']:.3f}; "
                 f"model / Bayes-optimal: {report['auc_ratio_to_bayes']:.3f}</p>")
    if report.get("atlas") is not None:
        extra += (f"<p>Location risk atlas (Eq. 15) alone, first {report['atlas']['studies']} studies: "
                  f"AUC {report['atlas']['auc']:.3f}</p>")
    if report.get("mean_contributions"):
        shares = ", ".join(f"{g} {100 * v:.1f}%" for g, v in report["mean_contributions"].items())
        extra += f"<p>Mean contribution shares (occlusion, runtime): {html.escape(shares)}</p>"
    figures = "".join(f'<img src="{name}" alt="{name}">' for name in images)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LLNM TMDL evaluation</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px}}</style></head><body>"
            f"<h1>TMDL evaluation</h1><p>Research use only, not for diagnosis.</p>"
            f"<p>model: {html.escape(report['model'])}<br>data: {html.escape(report['data'])}<br>"
            f"studies: {report['studies']} (positives {report['positives']}); threshold "
            f"{report['threshold']:.3f} (fixed on the validation split)</p>{extra}"
            f"<table><tr><th>metric</th><th>value</th><th>95% CI (bootstrap, {report['bootstrap']} over {report['bootstrap_over']})</th></tr>"
            f"{rows}</table>{figures}</body></html>")


def runtime_predict(data_dir: Path, backend, config, masks: str, progress: bool = True):
    """P(LLNM) and risk of every study through the runtime path (`llnm.pipeline.analyse_study`, the
    ONNX graphs on `backend`), with the folder's masks ("truth") or the segmentation models
    ("segmentation"). A study without a probability (no finding, or declined: not assessable) scores 0.
    Returns (study uids, probabilities, risk probabilities, uids of the studies without a probability,
    mean contribution share per group)."""
    from dataclasses import dataclass

    from tqdm import tqdm

    from llnm.model.data import read_layout, read_png
    from llnm.pipeline import analyse_study
    from llnm.study import StudyInput, View

    @dataclass
    class _Truth:
        mask: np.ndarray
        score: float = 1.0

    uids, probs, risks, missing, shares = [], [], [], 0, []
    abstained: list[str] = []
    for study in tqdm(read_layout(data_dir), desc=f"runtime ({masks} masks)", unit="study", disable=not progress):
        images = [read_png(v.image) for v in study.views]
        # the pipeline segments each view once, in order (and on its own copy of the image: the marks filled)
        truths = iter([(read_png(v.nodule_mask) > 127, read_png(v.gland_mask) > 127) for v in study.views])

        def truth_segmenter(_backend, image):
            nodule, gland = next(truths)
            return _Truth(nodule), gland

        result = analyse_study(
            StudyInput(study_uid=study.study_uid, views=[View(img, v.spacing_mm) for img, v in zip(images, study.views)],
                       report_text=study.report, age_years=study.age, sex=study.sex),
            backend, config=config, segmenter=truth_segmenter if masks == "truth" else None)
        uids.append(study.study_uid)
        if result.probability is None:
            missing += 1
            abstained.append(study.study_uid)
            probs.append(0.0)
            risks.append([1.0] + [0.0] * (config.risk_levels - 1))
        else:
            probs.append(result.probability)
            risks.append(result.risk_probabilities)
            shares.append(result.contributions)
    mean_shares = {g: float(np.mean([c[g] for c in shares])) for g in (shares[0] if shares else {})}
    return uids, np.array(probs), np.array(risks), abstained, mean_shares


TIRADS_RANK = {"2": 2.0, "3": 3.0, "4a": 4.0, "4b": 4.33, "4c": 4.67, "5": 5.0}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def tirads_sanity(p: np.ndarray, grades: list[str], threshold: float, n: int = 1000, seed: int = 0,
                  groups: list[str] | None = None) -> dict | None:
    """The only real labels near the question: P(LLNM) must rise with the TI-RADS grade (Spearman) and
    TI-RADS 2-3 nodules must fall below the decision threshold. Point values and 95 % bootstrap CIs
    over the studies given (those not declined; over patients when `groups` names each study's).
    A sanity check, not a validation."""
    keep = [i for i, g in enumerate(grades) if g in TIRADS_RANK]
    if len(keep) < 3:
        return None
    pk = np.asarray(p, dtype=float)[keep]
    rk = np.array([TIRADS_RANK[grades[i]] for i in keep])
    gk = None if groups is None else np.array([groups[i] for i in keep])
    low = rk <= 3.0
    rng = np.random.default_rng(seed)
    rhos, shares = [], []
    for _ in range(n):
        idx = resample(rng, len(pk), gk)
        rhos.append(spearman(pk[idx], rk[idx]))
        if low[idx].any():
            shares.append(float((pk[idx][low[idx]] < threshold).mean()))
    def ci(v):
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else [None, None]
    return {"studies": int(len(pk)), "patients": None if gk is None else int(len(np.unique(gk))),
            "spearman": spearman(pk, rk), "spearman_ci95": ci(rhos),
            "tirads_2_3": int(low.sum()),
            "tirads_2_3_below_threshold": float((pk[low] < threshold).mean()) if low.any() else None,
            "tirads_2_3_below_threshold_ci95": ci(shares),
            "mean_probability_by_grade": {g: float(pk[rk == TIRADS_RANK[g]].mean())
                                          for g in TIRADS_RANK if (rk == TIRADS_RANK[g]).any()}}


def _label_column(data_dir: Path, column: str) -> dict[str, str]:
    """{study_uid: the labels.csv column's value} ("" where the column or the value is missing)."""
    import csv

    with open(Path(data_dir) / "labels.csv", newline="", encoding="utf-8") as fh:
        return {r["study_uid"]: (r.get(column) or "").strip().lower() for r in csv.DictReader(fh)}


def _ratio_ci(p: np.ndarray, p_true: np.ndarray, y: np.ndarray, n: int, seed: int,
              groups: np.ndarray | None) -> list[float] | None:
    """95 % CI of AUC / Bayes-optimal AUC, both on the same bootstrap samples."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n):
        idx = resample(rng, len(y), groups)
        a, b = auc(p[idx], y[idx]), auc(p_true[idx], y[idx])
        if np.isfinite(a) and np.isfinite(b) and b > 0:
            ratios.append(a / b)
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if ratios else None


def _baseline(model_dir: Path, meta: dict, train: Path | None, data_dir: Path, uids: list[str], p: np.ndarray,
              y: np.ndarray, bootstrap: int, seed: int, groups: np.ndarray | None, workers: int = 1) -> dict:
    """The baseline beside the model on the same studies, or why there is none."""
    from llnm.model.baseline import compare

    if train is None and meta.get("data"):
        recorded = Path(meta["data"])
        train = next((c for c in (recorded, model_dir.parent.parent / recorded) if (c / "labels.csv").is_file()),
                     None)
    if train is None or not (Path(train) / "labels.csv").is_file():
        return {"skipped": "no baseline training folder (--baseline-train DIR; the model's own "
                           f"{meta.get('data')!r} is not here)"}
    return compare(Path(train), data_dir, uids, p, y, n=bootstrap, seed=seed, groups=groups, workers=workers)


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path, *, encode_text, bootstrap: int = 1000,
             seed: int = 0, progress: bool = True, examples: int = 4, atlas_studies: int = 100,
             jittered_masks: bool = False, runtime: str | None = None, backend=None,
             baseline_train: Path | None = None, device: str = "cpu", workers: int = 1) -> dict:
    """`jittered_masks`: score on perturbed masks (as from a segmentation model) instead of the given ones.
    `runtime` ("truth" or "segmentation"): score through the runtime pipeline on `backend` instead of
    the PyTorch checkpoint (the threshold still comes from the model folder). `baseline_train`: the
    training folder of the logistic-regression baseline (llnm.model.baseline; default: the model's own
    training folder from model.json, when it is there). `device`: where the checkpoint scores ("cpu",
    or a CUDA device in bfloat16 autocast); the explained examples run on the CPU. `workers`: processes
    for the feature cache and the baseline's mask measurements (the same figures for any number)."""
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_model(model_dir, device)
    if runtime and model.config.view_fusion != "probability":
        raise ValueError(f"view_fusion={model.config.view_fusion} has no ONNX export yet, so the runtime "
                         "cannot score this model; evaluate the checkpoint (without runtime)")
    cache = build_cache(data_dir, model.config, encode_text, jitters=int(jittered_masks), seed=seed,
                        progress=progress, workers=workers)
    no_finding, contributions, abstained_uids = None, None, []
    if runtime:
        uids, p, risk, abstained_uids, contributions = runtime_predict(data_dir, backend, model.config, runtime,
                                                                       progress)
        no_finding = len(abstained_uids)
        order = {u: i for i, u in enumerate(cache.study_uids)}
        present = np.array([order[u] for u in uids])
    else:
        present, p, risk = predict_studies(model, cache, variant=int(jittered_masks))
    y = cache.llnm[present]
    levels = cache.risk_level[present]
    threshold = float(meta.get("threshold", 0.5))
    # several studies of one patient (llnm real-studies writes `case`): resample patients for the CIs
    cases = _label_column(data_dir, "case")
    uids = [cache.study_uids[s] for s in present]
    groups = np.array([cases.get(u) or u for u in uids]) if any(cases.values()) else None
    metrics = all_metrics(p, y, threshold)
    metrics["risk_auc"] = risk_auc(risk, levels)
    at_half = threshold_metrics(p, y, 0.5)  # the paper reports at 0.5; the model's threshold is its own
    p_true = cache.p_true[present]
    has_truth = bool(np.isfinite(p_true).all())
    calibration = calibration_curve(p, y)
    decision = decision_curve(p, y)
    report = {
        "model": str(model_dir), "data": str(data_dir), "preset": model.config.name,
        "view_fusion": model.config.view_fusion,
        "masks": runtime or ("jittered" if jittered_masks else "as given"),
        "scored_by": "runtime pipeline (ONNX)" if runtime else "PyTorch checkpoint",
        "no_finding": no_finding,
        "mean_contributions": contributions,
        "studies": int(len(y)), "positives": int(y.sum()), "threshold": threshold,
        "metrics": metrics,
        "metrics_at_0_5": at_half,
        "ci95": bootstrap_ci(p, y, threshold, n=bootstrap, seed=seed, extra=(risk, levels), groups=groups),
        "bootstrap": bootstrap, "calibration": calibration, "decision_curve": decision,
        "bootstrap_over": "studies" if groups is None else f"patients ({len(set(groups))})",
        "bayes_auc": auc(p_true, y) if has_truth else None,
    }
    report["auc_ratio_to_bayes"] = (metrics["auc"] / report["bayes_auc"]) if has_truth else None
    report["auc_ratio_to_bayes_ci95"] = _ratio_ci(p, p_true, y, bootstrap, seed, groups) if has_truth else None
    abstained = set(abstained_uids)
    report["abstained"] = len(abstained) if runtime else None
    grades = _label_column(data_dir, "tirads")
    if any(grades.values()):
        answered = [k for k, s in enumerate(present) if cache.study_uids[s] not in abstained]
        report["tirads_sanity"] = tirads_sanity(
            p[answered], [grades.get(cache.study_uids[present[k]], "") for k in answered], threshold, seed=seed,
            groups=None if groups is None else [str(groups[k]) for k in answered])
    report["atlas"] = atlas_auc(model_dir, data_dir, atlas_studies)
    report["baseline"] = _baseline(model_dir, meta, baseline_train, data_dir, uids, p, y, bootstrap, seed, groups,
                                   workers)
    if not runtime:  # the model's own ablations: groups occluded at inference (GROUPS order)
        report["ablations"] = {
            name: auc(predict_studies(model, cache, present, variant=int(jittered_masks), group_keep=keep)[1], y)
            for name, keep in (("report_only", (0.0, 0.0, 1.0, 0.0)), ("image_only", (1.0, 1.0, 0.0, 0.0)),
                               ("without_report", (1.0, 1.0, 0.0, 1.0)))}
    images = _plots(out_dir, p, y, p_true if has_truth else None, calibration, decision)
    if examples:
        explain_examples(model.cpu(), data_dir, out_dir / "explanations.png", examples, encode_text)
        images.append("explanations.png")
    if (model_dir / "atlas.png").is_file():
        (out_dir / "atlas.png").write_bytes((model_dir / "atlas.png").read_bytes())
        images.append("atlas.png")
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.html").write_text(_html(report, images))
    predictions = [{"study_uid": cache.study_uids[s], "probability": float(pp), "llnm": int(yy),
                    "risk_probabilities": [float(r) for r in rr]} for s, pp, yy, rr in zip(present, p, y, risk)]
    (out_dir / "predictions.json").write_text(json.dumps(predictions) + "\n")
    return report
