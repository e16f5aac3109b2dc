"""Throughput with 1 and 2 worker processes (in-process ONNX Runtime), and each worker's peak RSS.

    nice -n 10 .venv/bin/python bench/worker_scaling.py --studies 6 --repeats 2

`--studies` 2-view phantom studies are written to a temp folder. Each worker is a spawned process
that imports only what `llnm worker` needs for a study (no torch), builds an OnnxRuntimeBackend,
warms it on one study, waits for the start signal, then runs llnm.predict.predict_study (decode ->
segmentation -> features -> text -> TMDL -> SEG/SR/key-image datasets) on its share of the studies.
Configurations, alternated in each repeat: 1 worker with 2 ONNX Runtime threads, 2 workers with 1
thread each (both use the 2 cores). studies/min = studies / wall time from the start signal to the
last worker's end; median over repeats. Peak RSS = each worker's VmHWM. Prints one JSON object.
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


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _worker(dirs: list[str], threads: int, ready, start, results) -> None:
    from llnm.config import Settings
    from llnm.dicom.loading import group_by_study
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.predict import predict_study

    settings = Settings(model_repository=REPO / "model_repository", ort_threads=threads)
    backend = OnnxRuntimeBackend(settings.model_repository, threads=threads)
    groups = [next(iter(group_by_study([Path(d)])[0].values())) for d in dirs]
    predict_study(groups[0], backend, settings)  # warm-up: sessions loaded
    ready.put(os.getpid())
    start.wait()
    for files in groups:
        predict_study(files, backend, settings)
    results.put((time.perf_counter(), _peak_rss_mb(), "torch" in __import__("sys").modules))


def run(dirs: list[Path], workers: int, threads: int) -> tuple[float, list[float], bool]:
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [[str(d) for d in dirs[i::workers]] for i in range(workers)]
    procs = [ctx.Process(target=_worker, args=(share, threads, ready, start, results)) for share in shares]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from llnm.phantom import write_phantom_set

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "studies": args.studies, "repeats": args.repeats}
    configs = {"1_worker_2_threads": (1, 2), "2_workers_1_thread": (2, 1)}
    rates: dict[str, list[float]] = {k: [] for k in configs}
    rss: dict[str, list[float]] = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_phantom_set(Path(tmp) / "set", studies=args.studies, seed=3)
        dirs = sorted(p for p in data.iterdir() if p.is_dir() and p.name != "truth")
        for _ in range(args.repeats):
            for name, (workers, threads) in configs.items():
                rate, peaks, torch_loaded = run(dirs, workers, threads)
                rates[name].append(rate)
                rss[name].extend(peaks)
                results["torch_imported_by_worker"] = torch_loaded
    for name in configs:
        results[name] = {"studies_per_min": round(statistics.median(rates[name]), 1),
                         "all_runs": [round(r, 1) for r in rates[name]],
                         "worker_peak_rss_mb": round(max(rss[name]), 1)}
    results["two_over_one"] = round(results["2_workers_1_thread"]["studies_per_min"]
                                    / results["1_worker_2_threads"]["studies_per_min"], 2)
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
