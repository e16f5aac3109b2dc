"""TMDL variants side by side on one held-out set: each variant's AUC, its ratio to the Bayes-optimal
AUC, the baseline difference and ablations (from its `llnm evaluate` folder), and the paired
difference to a reference variant (the same studies resampled for both, `llnm.model.baseline.paired_bootstrap`).

    .venv/bin/python bench/tmdl_variants.py --reference runs/ref-eval runs/lw-eval runs/area-eval ...

Each folder is what `llnm evaluate --out DIR` wrote (metrics.json, predictions.json) for the same --data.
Prints a Markdown table and writes the figures as JSON (--json). `--mean` adds a row for the mean of
every folder's study probabilities (e.g. the same flags trained with several seeds: a seed ensemble),
with its baseline difference from the baseline refitted on the reference's training folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from llnm.model.baseline import compare, paired_bootstrap
from llnm.model.metrics import auc, bootstrap_ci


def load(folder: Path) -> tuple[dict, dict[str, float], dict[str, int]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = json.loads((folder / "predictions.json").read_text())
    return metrics, {r["study_uid"]: r["probability"] for r in rows}, {r["study_uid"]: r["llnm"] for r in rows}


def mean_row(probabilities: list[np.ndarray], uids: list[str], y: np.ndarray, ref_metrics: dict,
             bootstrap: int) -> dict:
    """The row of the mean of the folders' study probabilities (first: the reference's, in `uids`
    order), scored like a variant of its own."""
    p = np.mean(probabilities, axis=0)
    base = compare(Path(ref_metrics["baseline"]["train"]), Path(ref_metrics["data"]), uids, p, y, n=bootstrap)
    paired = paired_bootstrap(p, probabilities[0], y, n=bootstrap)
    bayes = ref_metrics.get("bayes_auc")
    return {"variant": f"mean of {len(probabilities)}", "auc": auc(p, y), "ci95": bootstrap_ci(p, y, 0.5, n=bootstrap)["auc"],
            "ratio_to_bayes": auc(p, y) / bayes if bayes else None, "baseline_difference": base["difference"],
            "baseline_ci": [base["ci_low"], base["ci_high"]], "ablations": None,
            "vs_reference": [paired["difference"], paired["ci_low"], paired["ci_high"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="evaluate folder of the reference variant")
    parser.add_argument("variants", type=Path, nargs="+", help="evaluate folders of the other variants")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--mean", action="store_true",
                        help="also the mean of every folder's probabilities (a seed ensemble)")
    args = parser.parse_args()

    ref_metrics, ref_p, labels = load(args.reference)
    uids = sorted(ref_p)
    y = np.array([labels[u] for u in uids])
    out, probabilities = [], []
    for folder in [args.reference, *args.variants]:
        metrics, p, _ = load(folder)
        if sorted(p) != uids:
            raise SystemExit(f"{folder}: not the reference's studies")
        probabilities.append(np.array([p[u] for u in uids]))
        row = {"variant": folder.name, "auc": metrics["metrics"]["auc"], "ci95": metrics["ci95"]["auc"],
               "ratio_to_bayes": metrics.get("auc_ratio_to_bayes"),
               "baseline_difference": metrics["baseline"]["difference"],
               "baseline_ci": [metrics["baseline"]["ci_low"], metrics["baseline"]["ci_high"]],
               "ablations": metrics.get("ablations")}
        if folder != args.reference:
            paired = paired_bootstrap(probabilities[-1], probabilities[0], y, n=args.bootstrap)
            row["vs_reference"] = [paired["difference"], paired["ci_low"], paired["ci_high"]]
        out.append(row)
    if args.mean:
        out.append(mean_row(probabilities, uids, y, ref_metrics, args.bootstrap))
    print("| variant | AUC (95 % CI) | / Bayes | - baseline (CI) | vs reference (paired CI) | ablations |")
    print("|---|---|---|---|---|---|")
    for r in out:
        vs = r.get("vs_reference")
        abl = ", ".join(f"{k} {v:.3f}" for k, v in (r["ablations"] or {}).items())
        print(f"| {r['variant']} | {r['auc']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | "
              f"{r['ratio_to_bayes']:.3f} | {r['baseline_difference']:+.3f} ({r['baseline_ci'][0]:+.3f} to "
              f"{r['baseline_ci'][1]:+.3f}) | "
              + (f"{vs[0]:+.3f} ({vs[1]:+.3f} to {vs[2]:+.3f})" if vs else "reference") + f" | {abl} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
