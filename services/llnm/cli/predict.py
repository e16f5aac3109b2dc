"""`llnm predict PATH... --out DIR`: the whole pipeline in-process on DICOM files or folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="results folder: <out>/<study_uid>/")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="model_repository/ to load (default: LLNM_MODEL_REPOSITORY)")
    parser.add_argument("--report-dir", default=None,
                        help="folder of sidecar reports <StudyInstanceUID>.txt (default: LLNM_REPORT_DIR)")
    parser.add_argument("--no-key-images", action="store_true", help="do not write Secondary Capture key images")


def run(args: argparse.Namespace) -> int:
    from llnm.audit import error_text
    from llnm.config import Settings
    from llnm.dicom.loading import group_by_study
    from llnm.dicom.supersede import succeed_output
    from llnm.inference.backend import create_backend
    from llnm.observability.logs import configure_logging
    from llnm.predict import predict_study, write_output

    overrides: dict[str, object] = {"model_repository": args.model_repository, "report_dir": args.report_dir}
    if args.no_key_images:
        overrides["key_images"] = False
    settings = Settings.from_env(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"llnm predict: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    backend = create_backend(settings)
    groups, orphans = group_by_study(args.paths)
    for orphan in orphans:
        print(f"skipped {orphan}", file=sys.stderr)
    if not groups:
        print("llnm predict: no DICOM study found", file=sys.stderr)
        return 1
    failures = 0
    for uid in sorted(groups):
        groups[uid].warnings.extend(f"file {o}" for o in orphans)
        try:
            output = predict_study(groups[uid], backend, settings)
            succeed_output(output, _prior(args.out, uid))  # same result: same bytes; else supersede it
            folder = write_output(output, args.out)
        except Exception as exc:  # one failing study (analysis or writing) must not stop the others
            failures += 1
            print(f"{uid}: failed: {error_text(exc)}", file=sys.stderr)  # never a message quoting a value
            continue
        s = output.summary
        print(json.dumps({"study_uid": uid, "status": s["status"], "probability": s["probability"],
                          "risk_label": s["risk_label"], "calibrated": s["calibrated"],
                          "objects": len(s["objects"]), "folder": str(folder)}))
    return 1 if failures else 0


def _prior(out: Path, study_uid: str):
    """What an earlier `llnm predict` wrote for the study into `out` (its summary.json), if anything."""
    from llnm.dicom.supersede import ResultRecord
    from llnm.storage.names import validate_uid

    path = out / validate_uid(study_uid) / "summary.json"
    try:
        return ResultRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
