"""Throughput with 1 and 2 worker processes (in-process ONNX Runtime), and each worker's peak RSS;
with `--triton`, also through Triton with dynamic batching, same studies, same run.

    nice -n 10 .venv/bin/python bench/worker_scaling.py --studies 6 --repeats 2
    .venv/bin/python bench/worker_scaling.py --studies 8 --repeats 3 --triton

`--studies` 2-view phantom studies are written to a temp folder. Each worker is a spawned process
that imports only what `llnm worker` needs for a study (no torch), builds an OnnxRuntimeBackend,
warms it on one study, waits for the start signal, then runs llnm.predict.predict_study (decode ->
segmentation -> features -> text -> TMDL -> SEG/SR/key-image datasets) on its share of the studies.
Configurations, alternated in each repeat: 1 worker with 2 ONNX Runtime threads, 2 workers with 1
thread each (both use the 2 cores). studies/min = studies / wall time from the start signal to the
last worker's end; median over repeats. Peak RSS = each worker's VmHWM. Prints one JSON object.

`--triton` starts the real tritonserver of .venv-triton (tests/service/triton_harness.py: a
Python-backend copy of model_repository/ on CPU, each model one instance with its config's dynamic
batching, max_queue_delay 2 ms) and adds configurations whose workers use TritonBackend (HTTP)
instead of ONNX Runtime: 1 and 2 workers, and 4 (more concurrent requests for the batcher to merge).
The harness's model.py concatenates the requests Triton batched into one ONNX Runtime run and splits
the outputs (as Triton's own ONNX Runtime backend does), so dynamic batching really batches. The
server's ONNX Runtime runs 1 intra-op thread per model instance (`--triton-threads`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRITON_MODELS = ["nodule_seg", "thyroid_seg", "text_encoder", "tmdl"]


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")




def _worker(dirs: list[str], threads: int, ready, start, results, triton_url: str = "") -> None:
    from llnm.config import Settings
    from llnm.dicom.loading import group_by_study
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.inference.triton_backend import TritonBackend
    from llnm.predict import predict_study

    settings = Settings(model_repository=REPO / "model_repository", ort_threads=threads)
    if triton_url:
        backend = TritonBackend(triton_url, model_repository=settings.model_repository)
    else:
        backend = OnnxRuntimeBackend(settings.model_repository, threads=threads)
    groups = [next(iter(group_by_study([Path(d)])[0].values())) for d in dirs]
    predict_study(groups[0], backend, settings)  # warm-up: sessions loaded
    ready.put(os.getpid())
    start.wait()
    for files in groups:
        predict_study(files, backend, settings)
    results.put((time.perf_counter(), _peak_rss_mb(), "torch" in __import__("sys").modules))


def run(dirs: list[Path], workers: int, threads: int, triton_url: str = "") -> tuple[float, list[float], bool]:
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [[str(d) for d in dirs[i::workers]] for i in range(workers)]
    procs = [ctx.Process(target=_worker, args=(share, threads, ready, start, results, triton_url))
             for share in shares]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    t0 = time.perf_counter()
    start.set()
    ends = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    wall = max(e[0] for e in ends) - t0
    return len(dirs) * 60 / wall, [e[1] for e in ends], any(e[2] for e in ends)


def _batching_of(repository: Path) -> dict[str, str]:
    """Each model's dynamic_batching block as its config.pbtxt states it."""
    import re

    out = {}
    for config in sorted(repository.glob("*/config.pbtxt")):
        found = re.search(r"dynamic_batching\s*\{[^}]*\}", config.read_text())
        out[config.parent.name] = " ".join(found.group(0).split()) if found else "none"
    return out


def _batch_stats(url: str, models: list[str]) -> dict[str, dict]:
    """Triton's own counts: requests, rows (inference_count) and model executions; requests per
    execution above 1 means the dynamic batcher merged requests of different workers."""
    import urllib.request

    out = {}
    for name in models:
        with urllib.request.urlopen(f"{url}/v2/models/{name}/stats", timeout=10) as r:
            stats = json.loads(r.read())["model_stats"][0]
        rows, runs = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
        batches = stats.get("batch_stats", [])
        requests = int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))
        out[name] = {"requests": requests, "rows": rows, "executions": runs,
                     "requests_per_execution": round(requests / runs, 2) if runs else None,
                     "rows_per_execution": round(rows / runs, 2) if runs else None,
                     "executions_by_batch_size": {str(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                                                  for b in sorted(batches, key=lambda b: int(b["batch_size"]))}}
    return out


def _start_triton(workdir: Path, threads: int):
    """The harness's tritonserver over a temp copy of the repository."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "service"))
    from triton_harness import TritonServer

    os.environ["LLNM_TRITON_HARNESS_THREADS"] = str(threads)  # inherited by the server's stubs
    return TritonServer(REPO / "model_repository", workdir, TRITON_MODELS).start(timeout_s=180)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--triton", action="store_true", help="also through Triton with dynamic batching")
    parser.add_argument("--triton-threads", type=int, default=1, help="ONNX Runtime threads per Triton model")
    parser.add_argument("--triton-workers", default="1,2,4", help="worker counts for the Triton configurations")
    args = parser.parse_args()
    from llnm.phantom import write_phantom_set

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "studies": args.studies, "repeats": args.repeats}
    configs: dict[str, tuple[int, int, bool]] = {"1_worker_2_threads": (1, 2, False),
                                                 "2_workers_1_thread": (2, 1, False)}
    if args.triton:
        for n in (int(w) for w in args.triton_workers.split(",") if w):
            configs[f"{n}_worker{'s' if n > 1 else ''}_triton"] = (n, 1, True)
    rates: dict[str, list[float]] = {k: [] for k in configs}
    rss: dict[str, list[float]] = {k: [] for k in configs}
    triton = None
    with tempfile.TemporaryDirectory() as tmp:
        data = write_phantom_set(Path(tmp) / "set", studies=args.studies, seed=3)
        dirs = sorted(p for p in data.iterdir() if p.is_dir() and p.name != "truth")
        try:
            if args.triton:
                triton = _start_triton(Path(tmp) / "triton", args.triton_threads)
                results["triton"] = {"server_threads_per_model": args.triton_threads,
                                     "dynamic_batching": _batching_of(REPO / "model_repository")}
            for _ in range(args.repeats):
                for name, (workers, threads, via_triton) in configs.items():
                    rate, peaks, torch_loaded = run(dirs, workers, threads, triton.http_url if via_triton else "")
                    rates[name].append(rate)
                    rss[name].extend(peaks)
                    results["torch_imported_by_worker"] = torch_loaded
            if triton is not None:
                results["triton"]["batching_observed"] = _batch_stats(triton.http_url, TRITON_MODELS)
        finally:
            if triton is not None:
                triton.stop()
    for name in configs:
        results[name] = {"studies_per_min": round(statistics.median(rates[name]), 1),
                         "all_runs": [round(r, 1) for r in rates[name]],
                         "worker_peak_rss_mb": round(max(rss[name]), 1)}
    results["two_over_one"] = round(results["2_workers_1_thread"]["studies_per_min"]
                                    / results["1_worker_2_threads"]["studies_per_min"], 2)
    if args.triton:
        best_in_process = max(results["1_worker_2_threads"]["studies_per_min"],
                              results["2_workers_1_thread"]["studies_per_min"])
        best_triton = max(results[k]["studies_per_min"] for k in configs if k.endswith("triton"))
        results["best_triton_over_best_in_process"] = round(best_triton / best_in_process, 2)
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
