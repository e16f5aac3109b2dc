"""`llnm real-studies --frames DIR --out DIR --split train`: two-view studies from REAL whole frames.

Labels drawn from the documented risk model of llnm.phantom.real_frames over the real outlines, the
shipped gland model's masks and the real TI-RADS descriptors; the training layout `llnm train` reads.
`--merge DIR...` adds other layouts (e.g. an `llnm phantom` folder) to the written one, so one
`llnm train --data OUT` trains on both.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
from pathlib import Path

from llnm.config import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=Path, required=True, help="ddti_frames/ (image/, mask/, frames.csv)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", nargs="+", default=["train"], choices=["train", "select", "val"],
                        help="case splits to use (llnm.segmentation.data.case_split)")
    parser.add_argument("--studies-per-case", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="other training layouts whose studies are appended (paths are linked)")
    parser.add_argument("--model-repository", type=Path, default=None)


def merge_layout(source: Path, out: Path) -> int:
    """Append `source`'s labels.csv/views.csv rows to out's, pointing at source's files by absolute path."""
    source = source.resolve()
    count = 0
    for name in ("labels.csv", "views.csv"):
        with open(source / name, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        with open(out / name, newline="", encoding="utf-8") as fh:
            existing = csv.DictReader(fh)
            fields = list(existing.fieldnames or [])
            have = list(existing)
        for row in rows:
            for key in ("image", "gland_mask", "nodule_mask"):
                if key in row and row[key]:
                    row[key] = str(source / row[key])
        fields += [k for k in (rows[0] if rows else {}) if k not in fields]
        with open(out / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(have + rows)
        count = len(rows) if name == "labels.csv" else count
    return count


def command_line(args: argparse.Namespace) -> str:
    """The command that makes this folder again (from the parsed arguments, however it was called)."""
    words = ["llnm", "real-studies", "--frames", str(args.frames), "--out", str(args.out), "--split", *args.split,
             "--studies-per-case", str(args.studies_per_case), "--seed", str(args.seed)]
    if args.merge:
        words += ["--merge", *map(str, args.merge)]
    if args.model_repository:
        words += ["--model-repository", str(args.model_repository)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from llnm.inference.backend import create_backend
    from llnm.model.config import preset
    from llnm.model.data import git_commit
    from llnm.phantom.real_frames import generate

    overrides = {"model_repository": args.model_repository} if args.model_repository else {}
    settings = Settings.from_env(**overrides)
    backend = create_backend(settings)
    summary = generate(args.frames, args.out, tuple(args.split), backend, args.studies_per_case, args.seed,
                       preset(settings.preset).image_size)
    summary["merged"] = {str(m): merge_layout(m, args.out) for m in args.merge}
    summary["generator_commit"] = git_commit("phantom", "features", "segmentation")
    summary["command"] = command_line(args)
    (args.out / "generator.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0
