"""Per-stage CPU latency of the whole in-process pipeline on a 2-view phantom study (ONNX Runtime),
with the PyTorch eager TMDL as the baseline of the TMDL stage, all in one process and one run.

    nice -n 10 .venv/bin/python bench/pipeline_stages.py --runs 7 --threads 2

One phantom study (600 x 800, 2 views, with report) is timed: the first of `--candidates` written
to a temp folder in which both views are analysable (nodule and gland found), so TMDL runs 10 rows. Each run calls the
product's own functions in order and times them:
- headers: llnm.dicom.loading.group_by_study; decode: load_study (pixel decode, B-mode crop, calibration);
- analyse: llnm.pipeline.analyse_study, split by wrapping (in this process only) the segmenter, the
  feature extractor and the backend: nodule_seg / thyroid_seg (llnm.segmentation end to end, i.e.
  letterbox + ONNX + post-processing, per view), features (extract_features per view),
  text_encoder and tmdl (backend.infer; TMDL is one batch of 2 views x 5 occlusion rows);
- dicom_build: llnm.predict.build_datasets (SEG + SR + key images); serialize: every dataset to bytes;
- whole: headers + decode + analyse + dicom_build + serialize, i.e. files on disk to SR/SEG bytes.
Then the TMDL alone, same feed, batch 1 and the pipeline's batch (10 rows): ONNX Runtime session
against PyTorch eager (models/<preset>/model.pt through TMDLForExport, the same graph with rollout;
and the fused-attention forward without rollout), the three called in turn in every run. Also the
heat map of each analysed view (llnm.features.heatmap.tokens_to_heatmap, the product's low-rank form)
against `full_frame_heatmap` (tests/features/heatmap_reference.py: the implementation before it, splat every box, scipy
gaussian_filter over the whole frame), called in turn, with the largest difference between them.
Prints one JSON object; every figure is a median.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from timing import alternating

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "features"))
from heatmap_reference import full_frame_heatmap  # noqa: E402  the heat map before the low-rank form


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def interleaved(fns: list, runs: int, warmup: int) -> list[float]:
    """Median ms of each function, called in turn within every run (a noisy phase hits them all)."""
    return [round(statistics.median(t), 1) for t in alternating(fns, runs, warmup)]


class TimedBackend:
    """Delegates to a real backend and adds each infer call's wall time to `times[model]`."""

    def __init__(self, backend, times: dict[str, float]) -> None:
        self._backend, self.times = backend, times
        self.model_repository = backend.model_repository

    def infer(self, model: str, inputs: dict) -> dict:
        start = time.perf_counter()
        try:
            return self._backend.infer(model, inputs)
        finally:
            self.times[model] += time.perf_counter() - start

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads = torch threads")
    parser.add_argument("--model-repository", type=Path, default=REPO / "model_repository")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "tmdl-compact",
                        help="TMDL checkpoint folder (model.pt + preset.json) for the eager baseline")
    parser.add_argument("--candidates", type=int, default=6,
                        help="phantom studies to try; the first with both views analysable is timed")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write a pyinstrument HTML/text profile of one whole run here")
    args = parser.parse_args()

    import torch
    from pydicom import dcmwrite

    import llnm.pipeline as pipeline
    from llnm.config import Settings
    from llnm.dicom.loading import group_by_study, load_study
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.model.config import TMDLConfig
    from llnm.model.tmdl import TMDLForExport
    from llnm.model.train import load_model
    from llnm.phantom import write_phantom_set
    from llnm.predict import build_datasets
    from llnm.segmentation import segment_gland, segment_nodule

    torch.set_num_threads(args.threads)
    settings = Settings(model_repository=args.model_repository, ort_threads=args.threads)
    config = TMDLConfig.load(args.checkpoint / "preset.json")
    backend = OnnxRuntimeBackend(args.model_repository, threads=args.threads)
    times: dict[str, float] = defaultdict(float)
    timed_backend = TimedBackend(backend, times)

    def segmenter(b, image):
        start = time.perf_counter()
        det = segment_nodule(b, image)
        mid = time.perf_counter()
        gl = segment_gland(b, image)
        times["nodule_seg_end_to_end"] += mid - start
        times["thyroid_seg_end_to_end"] += time.perf_counter() - mid
        return det, gl

    original_extract = pipeline.extract_features

    def extract(*a, **k):
        start = time.perf_counter()
        try:
            return original_extract(*a, **k)
        finally:
            times["features"] += time.perf_counter() - start

    pipeline.extract_features = extract  # this process only: splits analyse_study's time
    feeds: list[dict] = []
    original_infer = backend.infer

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "threads": args.threads, "preset": config.name, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_phantom_set(Path(tmp) / "set", studies=args.candidates, seed=0)
        paths = []
        for candidate in sorted(p for p in data.iterdir() if p.is_dir() and p.name != "truth"):
            groups, _ = group_by_study([candidate])
            probe_study = load_study(next(iter(groups.values())))
            probe = pipeline.analyse_study(probe_study, backend, config=config)
            paths = [candidate]
            if sum(v.features is not None for v in probe.views) == 2:
                break
        results["analysable_views"] = sum(v.features is not None for v in probe.views)

        def whole() -> dict[str, float]:
            times.clear()
            t0 = time.perf_counter()
            groups, _ = group_by_study(paths)
            files = next(iter(groups.values()))
            t1 = time.perf_counter()
            study = load_study(files)
            t2 = time.perf_counter()
            result = pipeline.analyse_study(study, timed_backend, config=config, segmenter=segmenter)
            t3 = time.perf_counter()
            datasets = build_datasets(study, result, settings)
            t4 = time.perf_counter()
            for ds in datasets:
                dcmwrite(io.BytesIO(), ds, enforce_file_format=True)
            t5 = time.perf_counter()
            assert result.probability is not None and len(study.views) == 2, (result.finding, len(study.views))
            row = dict(times)
            row.update(headers=t1 - t0, decode=t2 - t1, analyse=t3 - t2, dicom_build=t4 - t3, serialize=t5 - t4,
                       whole=t5 - t0)
            row["analyse_other"] = row["analyse"] - sum(
                row.get(k, 0.0) for k in ("nodule_seg_end_to_end", "thyroid_seg_end_to_end", "features",
                                          "text_encoder", "tmdl"))
            row["objects"] = len(datasets)
            return row

        def capture(model, inputs):
            if model == "tmdl":
                feeds.append({k: v.copy() for k, v in inputs.items()})
            return original_infer(model, inputs)

        backend.infer = capture
        for _ in range(args.warmup):
            whole()
        rows = [whole() for _ in range(args.runs)]
        backend.infer = original_infer
        stages = ["headers", "decode", "nodule_seg_end_to_end", "nodule_seg", "thyroid_seg_end_to_end", "thyroid_seg",
                  "features", "text_encoder", "tmdl", "analyse_other", "analyse", "dicom_build", "serialize", "whole"]
        results["pipeline_ms"] = {s: median_ms([r.get(s, 0.0) for r in rows]) for s in stages}
        results["pipeline_ms"]["note"] = ("nodule_seg / thyroid_seg: ONNX session only, summed over 2 views; "
                                          "*_end_to_end add pre/post-processing; analyse includes them all; "
                                          "analyse_other: heat maps, rollout read-out, bookkeeping")
        results["objects_written"] = rows[0]["objects"]

        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001)
            profiler.start()
            whole()
            profiler.stop()
            args.profile.write_text(profiler.output_text(unicode=False, color=False, show_all=False))

    from llnm.features.heatmap import tokens_to_heatmap

    heat_rows = []
    importance = backend.infer("tmdl", feeds[-1])["token_importance"]
    for k, i in enumerate(i for i, v in enumerate(probe.views) if v.features is not None):
        args_ = (importance[k * 5], probe.views[i].features, probe_study.views[i].image.shape)
        fast, full = interleaved([lambda a=args_: tokens_to_heatmap(*a), lambda a=args_: full_frame_heatmap(*a)],
                                 max(args.runs * 3, 10), 2)
        heat_rows.append({"shape": list(args_[2]), "low_rank_ms": fast, "full_frame_ms": full,
                          "full_over_low_rank": round(full / fast, 1) if fast else None,
                          "max_abs_diff": float(np.abs(tokens_to_heatmap(*args_) - full_frame_heatmap(*args_)).max())})
    results["heatmap_per_view"] = heat_rows
    feed10 = feeds[-1]
    feed1 = {k: v[:1] for k, v in feed10.items()}
    eager, _ = load_model(args.checkpoint)
    graph = TMDLForExport(eager).eval()

    def torch_graph(feed):
        t = {k: torch.from_numpy(v) for k, v in feed.items()}
        with torch.inference_mode():
            graph(t["images"], t["text_states"], t["text_mask"], t["clinical"], t["group_keep"])

    def torch_fused(feed):
        t = {k: torch.from_numpy(v) for k, v in feed.items()}
        with torch.inference_mode():
            eager(t["images"], t["text_states"], t["text_mask"], t["clinical"], t["group_keep"])

    runs = max(args.runs * 3, 10)
    tmdl: dict = {}
    for label, feed in (("batch_1", feed1), (f"batch_{len(feed10['images'])}", feed10)):
        onnx, graph_ms, fused_ms = interleaved([lambda f=feed: backend.infer("tmdl", f),
                                                lambda f=feed: torch_graph(f), lambda f=feed: torch_fused(f)],
                                               runs, 3)
        tmdl[label] = {"onnxruntime_ms": onnx, "torch_eager_with_rollout_ms": graph_ms,
                       "torch_eager_fused_no_rollout_ms": fused_ms,
                       "torch_over_onnx": round(graph_ms / onnx, 2) if onnx else None}
    results["tmdl_ms"] = tmdl
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
