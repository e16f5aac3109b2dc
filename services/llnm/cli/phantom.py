"""`llnm phantom`: write synthetic thyroid ultrasound studies as DICOM, with labels and truth."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from llnm.phantom.profiles import PROFILES

    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--studies", type=int, default=10, help="number of studies (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, identical files")
    parser.add_argument("--start", type=int, default=0, help="index of the first study (default 0)")
    parser.add_argument("--rows", type=int, default=600, help="frame rows (default 600)")
    parser.add_argument("--cols", type=int, default=800, help="frame columns (default 800)")
    parser.add_argument("--rgb-fraction", type=float, default=0.0,
                        help="fraction of images written as RGB with grey content (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--textures", type=Path, default=None,
                        help="optional folder of real nodule crops (DDTI layout: cropped/*.png, mask/*.gif) "
                             "whose internal texture is added inside the synthetic nodules")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="standard",
                        help="generator preset (default standard); fusion: pixel-only risk factors, noisy "
                             "reports, risk on the latent anatomy (a benchmark that needs image and report)")
    parser.add_argument("--layout-only", action="store_true",
                        help="write the training layout and the truth without the DICOM studies (training and "
                             "evaluation read only those)")


def command_line(args: argparse.Namespace) -> str:
    """The command that writes this folder again (from the parsed arguments, however it was called)."""
    words = ["llnm", "phantom", "--out", str(args.out), "--studies", str(args.studies), "--seed", str(args.seed),
             "--start", str(args.start), "--rows", str(args.rows), "--cols", str(args.cols),
             "--rgb-fraction", str(args.rgb_fraction), "--profile", args.profile]
    if args.textures:
        words += ["--textures", str(args.textures)]
    if args.layout_only:
        words.append("--layout-only")
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from llnm.model.data import git_commit
    from llnm.phantom import write_phantom_set
    from llnm.phantom.risk import bayes_auc, read_labels

    if args.studies < 1 or args.rows < 64 or args.cols < 64 or not 0.0 <= args.rgb_fraction <= 1.0:
        print("llnm phantom: --studies >= 1, --rows/--cols >= 64 and 0 <= --rgb-fraction <= 1 are required")
        return 2
    t0 = time.perf_counter()
    out = write_phantom_set(args.out, args.studies, args.seed, rows=args.rows, cols=args.cols,
                            rgb_fraction=args.rgb_fraction, jobs=args.jobs, start=args.start,
                            textures=args.textures, progress=sys.stderr.isatty(), profile=args.profile,
                            dicom=not args.layout_only)
    labels = read_labels(out / "labels.csv")
    n = len(labels)
    positives = sum(int(r["llnm"]) for r in labels)
    auc = bayes_auc(out / "labels.csv")
    summary = {"out": str(out), "profile": args.profile, "n": n, "prevalence": round(positives / n, 4),
               "bayes_auc": None if auc != auc else round(auc, 4), "seconds": round(time.perf_counter() - t0, 1)}
    # what made the folder, for model.json (llnm.model.data.generator_record); not a DICOM file, so
    # `storescu +sp '*.dcm'` still sends exactly the studies
    record = {"generator": "llnm phantom", "command": command_line(args), "seed": args.seed, "start": args.start,
              "studies": n, "positives": positives, "profile": args.profile, "prevalence": summary["prevalence"],
              "bayes_auc": summary["bayes_auc"], "generator_commit": git_commit("phantom")}
    (out / "generator.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(summary))
    return 0
