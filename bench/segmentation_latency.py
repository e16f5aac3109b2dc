"""CPU latency of the two segmentation models: ONNX Runtime (shipped files) against PyTorch eager.

    .venv/bin/python bench/segmentation_latency.py --runs 50 --threads 1

For each model, in the same process and on the same frames: the median (and p90) wall time of
- `onnx_model`: one ONNX Runtime session.run on the model input (what Triton would run);
- `onnx_end_to_end`: llnm.segmentation.segment_nodule / segment_gland on a 480 x 640 frame
  (letterbox, inference, numpy post-processing, mapping back to the frame);
- `torch_eager_model`: the same architecture in PyTorch eager mode (torch.inference_mode) on the
  same input. Latency does not depend on the weight values, so the eager model is built from the
  architecture (YOLOv8s-seg yaml with one class, the shipped scale; U-Net++ as in train_gland) unless --nodule-weights /
  --gland-checkpoint point at trained weights.
Needs the `train` extra for the eager half. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 2),
            "runs": runs}


def frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:480, :640]
    base = 50 + 50 * ((yy > 150) & (yy < 330)) - 25 * ((yy - 240) ** 2 + (xx - 320) ** 2 < 60 ** 2)
    return np.clip(base * rng.rayleigh(1.0, base.shape) / 1.25, 0, 255).astype(np.uint8)


def eager_nodule(weights: Path | None):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if weights:
        from ultralytics import YOLO

        return YOLO(str(weights)).model.float().eval()
    from ultralytics.nn.tasks import SegmentationModel

    return SegmentationModel("yolov8s-seg.yaml", nc=1, verbose=False).fuse(verbose=False).eval()


def eager_gland(checkpoint: Path | None):
    from llnm.segmentation import train_gland

    return train_gland.load_checkpoint(checkpoint) if checkpoint else train_gland.build_model().eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads = torch threads")
    parser.add_argument("--model-repository", type=Path, default=REPO / "model_repository")
    parser.add_argument("--nodule-weights", type=Path, default=None)
    parser.add_argument("--gland-checkpoint", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.segmentation import gland, nodule, segment_gland, segment_nodule

    torch.set_num_threads(args.threads)
    backend = OnnxRuntimeBackend(args.model_repository, threads=args.threads)
    image = frame()
    results: dict = {"threads": args.threads, "cpu": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "frame": list(image.shape)}

    x_nodule, _ = nodule.nodule_input(image)
    x_gland, _ = gland.gland_input(image)
    models = {
        "nodule_seg": (x_nodule, nodule.INPUT_NAME, lambda: segment_nodule(backend, image),
                       eager_nodule(args.nodule_weights)),
        "thyroid_seg": (x_gland, gland.INPUT_NAME, lambda: segment_gland(backend, image),
                        eager_gland(args.gland_checkpoint)),
    }
    for name, (x, input_name, end_to_end, eager) in models.items():
        tensor = torch.from_numpy(x)

        def run_eager(model=eager, t=tensor):
            with torch.inference_mode():
                model(t)

        results[name] = {
            "input": list(x.shape),
            "onnx_file_mb": round((args.model_repository / name / "1" / "model.onnx").stat().st_size / 1e6, 2),
            "onnx_model": timed(lambda n=name, i=input_name, v=x: backend.infer(n, {i: v}), args.runs, args.warmup),
            "onnx_end_to_end": timed(end_to_end, args.runs, args.warmup),
            "torch_eager_model": timed(run_eager, args.runs, args.warmup),
        }
    results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
