"""The `llnm` command line. One module per command in this package; each defines
`configure(parser)` and `run(args) -> int`. Modules are imported only when their command runs, so
`llnm listener` never imports torch."""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> (module under llnm.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "embedded default: listener + in-process worker + ONNX Runtime, results to a folder"),
    "listener": ("listener", "DICOM listener (C-STORE SCP) feeding the Celery queue"),
    "worker": ("worker", "Celery worker processing completed studies"),
    "send": ("send", "send DICOM files or folders to a DICOM node (C-STORE SCU)"),
    "smoke-test": ("smoke_test", "prove an installation end to end: C-ECHO, one phantom study, wait for its result"),
    "requeue": ("requeue", "queue failed studies again"),
    "console": ("console", "the web console for operators and radiologists (add-user: its users)"),
    "cohort": ("cohort", "the hospital cohort from studies with outcomes, in the training layout (export)"),
    "status": ("status", "show the audit trail of one study"),
    "studies": ("studies", "list studies known to the service"),
    "predict": ("predict", "run the whole pipeline in-process on DICOM files or folders"),
    "phantom": ("phantom", "write synthetic thyroid ultrasound studies as DICOM, with labels"),
    "real-studies": ("real_studies", "two-view studies with drawn LLNM labels from real whole frames (training layout)"),
    "train": ("train", "train the TMDL model"),
    "evaluate": ("evaluate", "evaluate a TMDL model: AUC etc. with bootstrap CIs, HTML report"),
    "export": ("export", "export ONNX graphs (TMDL, text encoder) into model_repository/"),
    "model-info": ("model_info", "parameter count and FLOPs of a TMDL preset"),
    "model-hashes": ("model_hashes", "check (or --write) the sha256 each model's config.pbtxt declares for Triton"),
    "train-seg": ("train_seg", "train the nodule (YOLOv8-seg) or gland (U-Net++) segmentation model"),
    "evaluate-seg": ("evaluate_seg", "Dice/IoU of a segmentation model on a folder of images and masks"),
    "ood-fit": ("ood_fit", "fit the out-of-distribution check of the TMDL model (abstains on unlike inputs)"),
}


def build_parser() -> argparse.ArgumentParser:
    from llnm import RESEARCH_USE_STATEMENT, __version__

    parser = argparse.ArgumentParser(prog="llnm", description=f"LLNM worker. {RESEARCH_USE_STATEMENT}")
    parser.add_argument("--version", action="version", version=f"llnm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / version / the error
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(f"llnm.cli.{module_name}")
    sub = argparse.ArgumentParser(prog=f"llnm {name}", description=help_text)
    module.configure(sub)
    args = sub.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
