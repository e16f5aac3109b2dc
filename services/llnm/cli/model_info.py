"""`llnm model-info --preset paper`: parameter count and FLOPs of one forward pass of a TMDL preset."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="compact", help="paper, compact or tiny")
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    import torch

    from llnm.model.config import preset
    from llnm.model.info import model_info

    torch.set_num_threads(args.threads)
    print(json.dumps(model_info(preset(args.preset)), indent=2))
    return 0
