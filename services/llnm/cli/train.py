"""`llnm train --data DIR --preset compact --out DIR`: train TMDL on a folder in the training layout."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with labels.csv and views.csv")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--preset", default="compact", help="paper, compact or tiny")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4,
                        help="peak learning rate (AdamW, cosine after 3 warm-up epochs)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's decoupled weight decay")
    parser.add_argument("--patience", type=int, default=8, help="early stopping on the validation AUC")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="share of --data held out for early stopping and the threshold (without --val-data)")
    parser.add_argument("--val-data", type=Path, default=None,
                        help="a separate folder for early stopping and the threshold (patients apart from "
                             "--data); then all of --data is trained on")
    parser.add_argument("--jitters", type=int, default=2, help="perturbed mask copies per view")
    parser.add_argument("--group-dropout", type=float, default=0.0,
                        help="share of training views with one token group occluded (contribution shares and "
                             "ablations then occlude what the model has seen; 0: none)")
    parser.add_argument("--modality-dropout", type=float, default=0.0,
                        help="share of training views scored from one stream alone (the image groups, or the "
                             "report and demographics), so the model cannot lean on one source (0: none)")
    parser.add_argument("--aux-measures", type=float, default=0.0,
                        help="weight of an auxiliary training loss: the image stream also predicts the view's "
                             "measurements (capsule distance, size, third, texture; llnm.features.measures), "
                             "never an input, so the exported model is unchanged (0: none)")
    parser.add_argument("--view-fusion", choices=("probability", "pooled"), default="probability",
                        help="probability: each view scored alone, the study = the mean of the views' "
                             "probabilities (what the runtime runs); pooled: the views' pooled "
                             "representations averaged before the head, as in the paper (no ONNX export yet)")
    parser.add_argument("--shape-input", choices=("ratio", "length_width"), default=None,
                        help="what the shape token x_s reads: the aspect ratio (compact: the shipped model) or the "
                             "nodule's length and width in mm (the paper); default: the preset's")
    parser.add_argument("--image-sampling", choices=("point", "area", "energy"), default=None,
                        help="texture and margin images sampled at pixel centres (compact) or low-passed to "
                             "their pixel size first (area; energy: x_t the texture's local contrast); "
                             "default: the preset's")
    parser.add_argument("--location-aspect", choices=("stretch", "keep"), default=None,
                        help="x_l: the gland's box stretched onto the square image (compact) or a square box "
                             "around it, the aspect kept (the paper); default: the preset's")
    parser.add_argument("--location-input", choices=("map", "map_and_position"), default=None,
                        help="location group: the CPDT map only (the paper, the shipped model) or also a position "
                             "token x_p (capsule distance in mm, place in the gland box); default: the preset's")
    parser.add_argument("--text-tokens", type=int, choices=(50, 100, 150, 200), default=None,
                        help="report tokens TMDL reads (the paper's m = 50, the shipped model's); more are read as "
                             "consecutive 50-token windows of the report; default: the preset's")
    parser.add_argument("--pooling", choices=("tokens", "streams"), default=None,
                        help="tokens: the mean over every kept token (the paper, the shipped model); streams: the "
                             "image stream's and the text side's means weighted alike; default: the preset's")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="side of each feature image's patches (the image tokens: (image side / patch)^2 per "
                             "image); smaller patches give the image stream more tokens; default: the preset's")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of each feature image in pixels (compact 48, paper 224); the patch size must "
                             "divide it; default: the preset's")
    parser.add_argument("--mirror-augment", type=float, default=0.0,
                        help="share of training views whose texture and margin images are mirrored left-right "
                             "(x_l never: its left and right say medial / lateral, cranial / caudal; 0: none)")
    parser.add_argument("--image-stem", choices=("patch", "conv"), default=None,
                        help="patch: each patch projected linearly (the paper, the shipped model); conv: two stride-2 "
                             "3 x 3 convolutions first (early convolutions); default: the preset's")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="weight of soft targets from the structured baseline (llnm.model.baseline, "
                             "cross-fitted in up to five folds on the training studies, never the validation "
                             "ones) beside the labels (0: the labels alone)")
    parser.add_argument("--token-dropout", type=float, default=0.0,
                        help="share of report tokens hidden at random from each training study at every step "
                             "(word dropout, against learning a study's label from its report's token states; "
                             "0: none)")
    parser.add_argument("--distill-sources", default="report,image,demographics",
                        help="the teacher's inputs (llnm.model.baseline sources; adding pixels makes it the "
                             "hand-made pixel reader)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these weights (a state dict of the same configuration) instead of random ones")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout in TMDL's attention and MLP blocks; default: the preset's (0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="where to train: cpu, or a CUDA device (cuda, cuda:1) in bfloat16 autocast (the "
                             "paper preset; scripts/device/README.md)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no epoch after this many minutes of training (default: no budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes for the feature cache (the same cache for any number)")
    parser.add_argument("--nice", type=int, default=10, help="lower this process's CPU priority")
    parser.add_argument("--atlas-views", type=int, default=300,
                        help="views registered into the location risk atlas (0: no atlas)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.nice:
        os.nice(args.nice)
    from llnm.config import Settings
    from llnm.model.config import preset
    from llnm.model.train import onnx_text_encoder, train

    settings = Settings.from_env()
    overrides = {"view_fusion": args.view_fusion}
    overrides.update({k: v for k, v in (("shape_input", args.shape_input),
                                        ("image_sampling", args.image_sampling),
                                        ("location_aspect", args.location_aspect),
                                        ("location_input", args.location_input),
                                        ("text_tokens", args.text_tokens),
                                        ("image_size", args.image_size),
                                        ("patch_size", args.patch_size),
                                        ("pooling", args.pooling),
                                        ("image_stem", args.image_stem),
                                        ("dropout", args.dropout)) if v is not None})
    config = preset(args.preset, **overrides)
    meta = train(args.data, args.out, config, encode_text=onnx_text_encoder(settings.model_repository),
                 epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                 patience=args.patience,
                 val_fraction=args.val_fraction, jitters=args.jitters, seed=args.seed, threads=args.threads,
                 progress=not args.no_progress, command="llnm " + shlex.join(sys.argv[1:]),
                 val_dir=args.val_data, group_dropout=args.group_dropout, workers=args.workers,
                 modality_dropout=args.modality_dropout, aux_measures=args.aux_measures,
                 mirror_augment=args.mirror_augment, distill=args.distill,
                 distill_sources=tuple(args.distill_sources.split(",")), device=args.device,
                 max_minutes=args.max_minutes, init=args.init, token_dropout=args.token_dropout)
    if args.atlas_views:
        from llnm.model.atlas import atlas_from_layout, atlas_png

        atlas = atlas_from_layout(args.data, max_views=args.atlas_views, seed=args.seed)
        atlas.save(args.out / "atlas.npz")
        atlas_png(atlas, args.out / "atlas.png")
    print(json.dumps({**{k: meta[k] for k in ("preset", "val_auc", "best_epoch", "epochs_run", "threshold")},
                      "view_fusion": config.view_fusion, "shape_input": config.shape_input,
                      "image_sampling": config.image_sampling, "location_aspect": config.location_aspect,
                      "location_input": config.location_input,
                      "text_tokens": config.text_tokens, "image_size": config.image_size,
                      "patch_size": config.patch_size,
                      "pooling": config.pooling, "image_stem": config.image_stem}))
    return 0
