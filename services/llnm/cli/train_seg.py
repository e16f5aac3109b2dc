"""`llnm train-seg --model {nodule,gland}`: train a segmentation model and export it to model_repository/.

Seeded; shows a progress bar and writes a log file beside the checkpoints. Needs the `train` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from llnm.config import REPO_ROOT, Settings
from llnm.segmentation.nodule import INPUT_SIZE

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = Path("/tmp/llnm-seg-train")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["nodule", "gland"], required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding tg3k/, ddti/ and ddti_frames/ (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="checkpoints, logs and the composed-frame cache; never inside the repository")
    parser.add_argument("--phantom", type=Path, default=None,
                        help="nodule model: an `llnm phantom` output folder whose frames join the training set")
    parser.add_argument("--epochs", type=int, default=None, help="default: 8 (gland) / 40 (nodule)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="stop after this much training time")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these weights (a fine-tuning stage) instead of random ones: gland .pt / YOLO best.pt, "
                             "or a shipped model.onnx (its batch norms are re-estimated)")
    parser.add_argument("--mosaic", action="store_true",
                        help="nodule model: keep Ultralytics mosaic on in a fine-tuning stage (off by default there)")
    parser.add_argument("--arch", choices=["n", "s", "m"], default="s",
                        help="nodule model: YOLOv8 scale when training from random weights (default: %(default)s)")
    parser.add_argument("--imgsz", type=int, default=None,
                        help=f"nodule model: training input side in pixels (default: the runtime's, {INPUT_SIZE}); a model "
                             "trained at another size ships with llnm.segmentation.nodule.INPUT_SIZE changed")
    parser.add_argument("--device", default="cpu", help="nodule model: 'cpu' or a CUDA device such as '0'")
    parser.add_argument("--workers", type=int, default=0, help="nodule model: data-loading processes")
    parser.add_argument("--batch", type=int, default=None, help="nodule model: images per step (default 8)")
    parser.add_argument("--close-mosaic", type=int, default=None,
                        help="nodule model: last epochs without mosaic (default 4 fine-tuning, 2 from random weights)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3 gland, 2e-3 nodule)")
    parser.add_argument("--frame-share", type=float, default=0.125,
                        help="gland model: share of each batch from ddti_frames/ train cases, pseudo-labelled by --init (0: none)")
    parser.add_argument("--gamma-augment", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="nodule model: regrade each real whole frame's second and later copies by a gamma "
                             "drawn log-uniformly from LOW..HIGH (other devices' display curves; e.g. 0.7 1.4)")
    parser.add_argument("--blur-augment", type=float, default=None, metavar="SIGMA",
                        help="nodule model: blur each real whole frame's second and later copies by a Gaussian "
                             "of sigma drawn from 0..SIGMA pixels (softer transducers and filters; e.g. 2)")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="nodule model: train on this training set, written earlier (its images/ and labels/; "
                             "scripts/device/pack_nodule.py) instead of building one from --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine may be shared)")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="export target (default: LLNM_MODEL_REPOSITORY); --no-export to skip")
    parser.add_argument("--no-export", action="store_true")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from llnm.observability.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    out = args.out / args.model
    out.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(out / "train.log")
    file_handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().addHandler(file_handler)
    repository = args.model_repository or settings.model_repository
    if args.model == "gland":
        from llnm.segmentation import train_gland

        frames = args.data / "ddti_frames"
        cfg = train_gland.GlandTrainConfig(data=args.data / "tg3k", out=out, epochs=args.epochs or 8,
                                           seed=args.seed, threads=args.threads, max_minutes=args.max_minutes,
                                           init=args.init, lr=args.lr or 3e-3,
                                           frames=frames if frames.is_dir() else None,
                                           crops=args.data / "ddti" if (args.data / "ddti").is_dir() else None,
                                           frame_share=args.frame_share)
        summary = train_gland.train(cfg)
        if not args.no_export:
            summary["onnx"] = str(train_gland.export_onnx(out / "gland_best.pt",
                                                          repository / "thyroid_seg" / "1" / "model.onnx"))
    else:
        from llnm.segmentation import train_nodule

        cfg = train_nodule.NoduleTrainConfig(data=args.data, out=out, phantom=args.phantom,
                                             epochs=args.epochs or 40, seed=args.seed, threads=args.threads,
                                             max_minutes=args.max_minutes, init=args.init, lr=args.lr or 0.002,
                                             mosaic=args.mosaic, arch=args.arch, device=args.device,
                                             workers=args.workers, close_mosaic=args.close_mosaic,
                                             gamma_range=tuple(args.gamma_augment) if args.gamma_augment else None,
                                             blur_max=args.blur_augment, dataset=args.dataset,
                                             **({"imgsz": args.imgsz} if args.imgsz else {}),
                                             **({"batch": args.batch} if args.batch else {}))
        summary = train_nodule.train(cfg)
        if not args.no_export:
            summary["onnx"] = str(train_nodule.export_onnx(Path(summary["best"]),
                                                           repository / "nodule_seg" / "1" / "model.onnx"))
    if not args.no_export:  # Triton's config names the new file's sha256 (llnm.inference.provenance)
        from llnm.inference.provenance import declare

        summary["sha256"] = declare(repository, "thyroid_seg" if args.model == "gland" else "nodule_seg")
    print(json.dumps(summary, indent=2, default=str))
    return 0
