"""Segmentation latency against the frame's size: the shipped morphology beside scipy's, in one run.

    .venv/bin/python bench/frame_size_latency.py --data ../shared/data --frames 8 --scales 1 2 3.4

Devices send frames from 560 x 360 (DDTI) to 1920 x 1080. The product's path for a frame without
DICOM regions (`llnm.segmentation.evaluate.segment_picture`: the image found in the pixels, marks
filled, both models with their mirror images, post-processing, the gate) is timed on ddti_frames
select frames resized by each scale, twice in the same process: with `llnm.segmentation.morphology`
(separable squares, distance-transform discs) and with the scipy.ndimage calls it replaced (the
baseline: binary_opening / binary_closing with the full structuring element). The masks must be
identical; the JSON line per scale gives the median seconds per frame of each and their ratio.
ONNX Runtime with one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation import morphology, postprocess, region
from llnm.segmentation.data import ddti_frame_pairs, read_grey, read_mask
from llnm.segmentation.evaluate import segment_picture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segmentation_devices import rescale  # noqa: E402

SCIPY = {
    "square_opening": lambda mask, size: ndimage.binary_opening(mask, np.ones((size, size), dtype=bool)),
    "square_closing": lambda mask, size: ndimage.binary_closing(mask, np.ones((size, size), dtype=bool)),
    "disc_opening": lambda mask, radius: ndimage.binary_opening(mask, morphology.disc(radius)),
}
SHIPPED = {name: getattr(morphology, name) for name in SCIPY}


def use(implementation: dict) -> None:
    """Point the modules that call the morphology at `implementation`."""
    region.square_opening, region.square_closing = implementation["square_opening"], implementation["square_closing"]
    postprocess.disc_opening = implementation["disc_opening"]


def timed(backend, frames: list[np.ndarray]) -> tuple[list[float], list]:
    times, results = [], []
    for frame in frames:
        start = time.perf_counter()
        seg = segment_picture(backend, frame)
        times.append(time.perf_counter() - start)
        results.append((seg.nodule, seg.gland))
    return times, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.4])
    args = parser.parse_args(argv)
    pairs = ddti_frame_pairs(args.data / "ddti_frames", ("select",))[:args.frames]
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    for scale in args.scales:
        frames = [rescale(read_grey(i), read_mask(m), scale)[0] for i, m in pairs]
        segment_picture(backend, frames[0])  # warm-up
        use(SCIPY)
        base, base_masks = timed(backend, frames)
        use(SHIPPED)
        fast, fast_masks = timed(backend, frames)
        same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(base_masks, fast_masks))
        print(json.dumps({"frame": list(frames[0].shape), "frames": len(frames),
                          "scipy_s_per_frame": round(statistics.median(base), 3),
                          "shipped_s_per_frame": round(statistics.median(fast), 3),
                          "speed_up": round(statistics.median(base) / statistics.median(fast), 1),
                          "identical_masks": same}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
