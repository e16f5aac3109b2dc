"""How much room a fusion-profile phantom leaves a learned model above the structured baseline (issue 15).

    .venv/bin/python bench/fusion_headroom.py --train /tmp/fusion/train --test /tmp/fusion/test

Both folders are `llnm phantom --profile fusion` outputs (their generator.json names seed, start and
profile). For the held-out set it prints, with paired 95 % bootstrap CIs against the baseline:

- the Bayes-optimal AUC (the true probability p_true against the drawn labels);
- an "oracle reader": a logistic model (`llnm.phantom.information.fit_logistic`) on the LATENT values of
  every input (what the report states, everything the pixels show, age and sex), trained on the
  training folder's own latent draws: a model that reads every input perfectly and learns from as many
  studies as TMDL does; also on the report's and on the image's latent values alone;
- the structured baseline (`llnm.model.baseline`, fitted on the training folder, as `llnm evaluate`);
- a hand-made pixel reader: the baseline with the `pixels` source added (internal heterogeneity, bright
  punctate foci and outline irregularity measured on the masks, `llnm.features.measures`), and how
  legible each pixel-only factor is: the Spearman correlation of its measurement with the latent value
  on the held-out studies (foci on the nodules that have punctate foci). A factor the measurements
  cannot read is one no image model can be expected to read either.

A learned model can at best approach the oracle reader, so "model - baseline" can only clear 0 with
its CI where "oracle - baseline" clears it by a margin. Pure CPU; minutes (the baseline reads the masks).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from llnm.model import baseline
from llnm.model.data import read_layout
from llnm.model.metrics import auc
from llnm.phantom.information import (demographic_features, image_features, latent_draw, logistic_scores,
                                      report_features)
from llnm.phantom.profiles import get_profile


def latent_rows(folder: Path) -> tuple[list, list[str]]:
    """The latent draw of every study of a phantom folder, in labels.csv order, checked against its labels."""
    generator = json.loads((folder / "generator.json").read_text())
    profile = get_profile(generator["profile"])
    if not profile.latent_risk:
        raise SystemExit(f"{folder}: profile {profile.name!r} has no latent risk (use --profile fusion)")
    labels = list(csv.DictReader((folder / "labels.csv").read_text().splitlines()))
    rows = [latent_draw(generator["seed"], generator["start"] + i, profile) for i in range(len(labels))]
    if any(int(row["llnm"]) != draw[3] for row, draw in zip(labels, rows)):
        raise SystemExit(f"{folder}: labels.csv does not follow the generator's draws (another generator commit?)")
    return rows, [row["study_uid"] for row in labels]


def latent_matrix(rows: list, parts: tuple[str, ...]) -> np.ndarray:
    dicts = []
    for findings, report, _, _ in rows:
        values = dict(demographic_features(findings))
        if "report" in parts:
            values |= {f"report.{k}": v for k, v in report_features(findings, report).items()}
        if "image" in parts:
            values |= {f"image.{k}": v for k, v in image_features(findings).items()}
        dicts.append(values)
    keys = sorted(dicts[0])
    return np.array([[d[k] for k in keys] for d in dicts], dtype=float)


def oracle_scores(train: list, test: list, parts: tuple[str, ...]) -> np.ndarray:
    return logistic_scores(latent_matrix(train, parts), np.array([r[3] for r in train]), latent_matrix(test, parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    train, _ = latent_rows(args.train)
    test, uids = latent_rows(args.test)
    y = np.array([r[3] for r in test])
    studies = {s.study_uid: s for s in read_layout(args.test)}
    train_studies = read_layout(args.train)
    test_studies = [studies[u] for u in uids]
    memo: baseline.Memo = {}
    base = baseline.fit(train_studies, memo=memo).predict(test_studies, memo)
    reader = baseline.fit(train_studies, inputs=baseline.DEFAULT_INPUTS + ("pixels",), memo=memo)
    scores = {"Bayes-optimal (p_true)": np.array([r[2] for r in test])}
    for parts in (("report", "image"), ("report",), ("image",)):
        scores[f"oracle reader, latent {' + '.join(parts)} + age/sex"] = oracle_scores(train, test, parts)
    scores["pixel reader: baseline + measured heterogeneity, foci, outline irregularity"] = reader.predict(
        test_studies, memo)
    measured = {k: np.array([memo[(id(s), "pixels")][k] for s in test_studies]) for k in baseline.PIXEL_MEASURES}
    latent = {"heterogeneity": np.array([r[0].heterogeneity for r in test]),
              "foci": np.array([r[0].foci_per_cm2 for r in test]),
              "irregularity": np.array([r[0].spiculation for r in test])}
    has_foci = latent["foci"] > 0
    legibility = {k: float(spearmanr(measured[k][has_foci] if k == "foci" else measured[k],
                                     latent[k][has_foci] if k == "foci" else latent[k]).correlation)
                  for k in baseline.PIXEL_MEASURES}
    out = {"train": str(args.train), "test": str(args.test), "train_studies": len(train), "test_studies": len(test),
           "baseline_auc": auc(base, y), "legibility_spearman": legibility, "rows": []}
    print(f"held-out {len(test)} studies, trained on {len(train)}; baseline AUC {out['baseline_auc']:.3f}\n")
    print("| scores | AUC | - baseline (paired 95 % CI) |\n|---|---|---|")
    for name, s in scores.items():
        d = baseline.paired_bootstrap(s, base, y, n=args.bootstrap)
        out["rows"].append({"name": name, **d})
        print(f"| {name} | {d['model_auc']:.3f} | {d['difference']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f}) |")
    print("\nlegibility (Spearman, measured vs latent; foci on nodules with foci): "
          + ", ".join(f"{k} {v:.2f}" for k, v in legibility.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
