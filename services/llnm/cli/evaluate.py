"""`llnm evaluate --data DIR --model DIR`: AUC, sensitivity, specificity, accuracy, NPV, PPV with 95 %
bootstrap CIs, the 3-level risk AUC, calibration and decision curves (JSON + HTML report)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llnm.config import REPO_ROOT


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with labels.csv and views.csv")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "tmdl-compact",
                        help="trained model folder (model.pt, preset.json, model.json)")
    parser.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="report folder")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for the feature cache and the baseline's mask measurements")
    parser.add_argument("--device", default="cpu",
                        help="where the checkpoint scores: cpu, or a CUDA device in bfloat16 autocast (the paper preset)")
    parser.add_argument("--examples", type=int, default=4, help="explained studies in the report")
    parser.add_argument("--atlas-studies", type=int, default=100,
                        help="studies scored with the model's location atlas (0: skip)")
    parser.add_argument("--jittered-masks", action="store_true",
                        help="score on perturbed masks, as a segmentation model would give them")
    parser.add_argument("--runtime", choices=("truth", "segmentation"), default=None,
                        help="score through the runtime pipeline (ONNX in model_repository/) with the "
                             "folder's masks or the segmentation models, instead of the PyTorch checkpoint")
    parser.add_argument("--baseline-train", type=Path, default=None,
                        help="training folder of the logistic-regression baseline reported beside the model "
                             "(default: the model's own training folder, recorded in model.json, when present)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from llnm.config import Settings
    from llnm.model.evaluate import evaluate
    from llnm.model.train import onnx_text_encoder

    torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    backend = None
    if args.runtime:
        from llnm.inference.backend import create_backend

        backend = create_backend(settings)
    report = evaluate(args.model, args.data, args.out,
                      encode_text=onnx_text_encoder(settings.model_repository),
                      bootstrap=args.bootstrap, seed=args.seed, progress=not args.no_progress,
                      examples=args.examples, atlas_studies=args.atlas_studies,
                      jittered_masks=args.jittered_masks, runtime=args.runtime, backend=backend,
                      baseline_train=args.baseline_train, device=args.device, workers=args.workers)
    summary = {"studies": report["studies"], "positives": report["positives"],
               **{k: round(v, 4) for k, v in report["metrics"].items()},
               "ci95": {k: [round(a, 4), round(b, 4)] for k, (a, b) in report["ci95"].items()},
               "bootstrap_over": report["bootstrap_over"],
               "at_threshold_0.5": {k: round(v, 4) for k, v in report["metrics_at_0_5"].items()}}
    if report["bayes_auc"] is not None:
        summary["bayes_auc"] = round(report["bayes_auc"], 4)
        summary["auc_ratio_to_bayes"] = round(report["auc_ratio_to_bayes"], 4)
        if report.get("auc_ratio_to_bayes_ci95"):
            summary["auc_ratio_to_bayes_ci95"] = [round(v, 4) for v in report["auc_ratio_to_bayes_ci95"]]
        print(f"Bayes-optimal AUC of this set (p_true vs llnm): {report['bayes_auc']:.4f}")
    if report["no_finding"] is not None:
        summary["no_finding"] = report["no_finding"]
        summary["mean_contributions"] = {k: round(v, 3) for k, v in report["mean_contributions"].items()}
    if report.get("tirads_sanity"):
        summary["tirads_sanity"] = report["tirads_sanity"]
    if report.get("abstained") is not None:
        summary["abstained"] = report["abstained"]
    if report["atlas"] is not None:
        summary["atlas_location_auc"] = round(report["atlas"]["auc"], 4)
    baseline = report["baseline"]
    summary["baseline"] = baseline if "skipped" in baseline else {
        k: round(baseline[k], 4) for k in ("baseline_auc", "difference", "ci_low", "ci_high", "report_only_auc",
                                           "image_only_auc")}
    if report.get("ablations"):
        summary["ablations_auc"] = {k: round(v, 4) for k, v in report["ablations"].items()}
    print(json.dumps(summary, indent=2))
    print(f"report: {args.out / 'report.html'}")
    return 0
