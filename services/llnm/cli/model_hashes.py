"""`llnm model-hashes`: the sha256 each model's config.pbtxt declares (parameter llnm_sha256) against its
1/model.onnx. Workers compare Triton's declaration with their own file before they use a model
(llnm.inference.provenance), so after replacing a model file run `llnm model-hashes --write`.

Exit status: 0 when every declaration matches (after --write: always, unless a file is unreadable), 1 when
one is missing or stale (--check, the default), 2 when the repository has no model."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*",
                        help="model names (default: every model with config.pbtxt and 1/model.onnx)")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: LLNM_MODEL_REPOSITORY or ./model_repository")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail when a declaration is missing or stale (default)")
    mode.add_argument("--write", action="store_true", help="declare each model file's sha256 in its config.pbtxt")


def run(args: argparse.Namespace) -> int:
    from llnm.config import Settings
    from llnm.inference import provenance

    repository = args.model_repository or Settings.from_env().model_repository
    models = list(args.models) or provenance.repository_models(repository)
    if not models:
        print(f"no model with config.pbtxt and 1/model.onnx in {repository}")
        return 2
    missing = [m for m in models if not provenance.model_file(repository, m).is_file()
               or not provenance.config_file(repository, m).is_file()]
    if missing:
        print(f"not in {repository} (config.pbtxt and 1/model.onnx): {', '.join(missing)}")
        return 2
    if args.write:
        for item in provenance.write_repository(repository, models):
            state = "unchanged" if item.ok else f"written (was {(item.declared or 'none')[:provenance.SHORT]})"
            print(f"{item.model:14s} {item.actual}  {state}")
        return 0
    stale = 0
    for item in provenance.check_repository(repository, models):
        if item.ok:
            print(f"{item.model:14s} {item.actual}  ok")
        else:
            stale += 1
            print(f"{item.model:14s} {item.actual}  STALE: config.pbtxt declares {item.declared or 'nothing'}")
    if stale:
        print(f"{stale} model(s) declare another sha256 than their file: run `llnm model-hashes --write"
              f"{' --model-repository ' + str(repository) if args.model_repository else ''}`")
        return 1
    return 0
