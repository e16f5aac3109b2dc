"""End to end: from the last C-STORE of a 2-view study to its SR stored in Orthanc, minus the
configured study-idle time, for the embedded default and for Redis + Celery + Triton, in one run.

    .venv/bin/python bench/end_to_end_latency.py --studies 7 --series-idle 1 --study-idle 1

Both stacks run side by side against one real Orthanc (the PACS, from tests/service/support.py):
- embedded: `llnm serve` (listener + in-process queue + worker thread + ONNX Runtime), one process;
- celery_triton: `llnm listener` + `llnm worker` (Celery over Redis on 127.0.0.1:6379, own key
  prefix) + the real tritonserver of .venv-triton served by tests/service/triton_harness.py (its
  Python-backend copy of model_repository/, KIND_CPU instance groups, the same dynamic batching).
Both send their SR/SEG/key images to Orthanc by C-STORE. One analysable phantom study (2 views +
report SR) is re-identified for every send (new study, series and SOP Instance UIDs, same pixels),
so every repeat does the same work. Per repeat, the stacks take turns: this process sends the study
by C-STORE (pynetdicom, one association, calling AE MODALITY), notes the time the last C-STORE
response arrived, then polls Orthanc's REST API (/tools/find, every `--poll` s) until an SR series
of that study is there. Latency beyond idle = that time - (series idle + study idle), the listener's
configured completion timers (the completion check itself runs every 0.5 s: +0.25 s on average).
One warm-up study per stack is not counted. At the end each stack's worker /metrics gives the mean
of its stages (llnm_stage_seconds: pipeline, dicom_write, send, ...; warm-up included), the rest of
the latency being the completion check, the queue hop and Orthanc's store. Prints one JSON object;
figures are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "service"))

from support import Orthanc, Service, VENV_BIN, free_port, wait_for  # noqa: E402
from triton_harness import TritonServer, triton_root  # noqa: E402

MODELS = ["nodule_seg", "thyroid_seg", "text_encoder", "tmdl"]


def analysable_study(folder: Path, candidates: int) -> Path:
    """The first phantom study in which both views have a nodule and a gland (TMDL runs 2 views)."""
    from llnm.dicom.loading import group_by_study, load_study
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.phantom import write_phantom_set
    from llnm.pipeline import analyse_study

    data = write_phantom_set(folder, studies=candidates, seed=0)
    backend = OnnxRuntimeBackend(REPO / "model_repository", threads=2)
    dirs = sorted(p for p in data.iterdir() if p.is_dir() and p.name != "truth")
    for d in dirs:
        groups, _ = group_by_study([d])
        result = analyse_study(load_study(next(iter(groups.values()))), backend)
        if sum(v.features is not None for v in result.views) == 2:
            return d
    return dirs[0]


def reidentified(template: Path) -> tuple[str, list]:
    """The template study's datasets under fresh study/series/SOP UIDs (references follow)."""
    import pydicom
    from pydicom.uid import generate_uid

    datasets = [pydicom.dcmread(p) for p in sorted(template.glob("*.dcm"))]
    mapping: dict[str, str] = {}
    for ds in datasets:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            old = str(ds.get(keyword, ""))
            if old and old not in mapping:
                mapping[old] = str(generate_uid())

    def swap(dataset, elem) -> None:
        if elem.VR == "UI" and isinstance(elem.value, str) and elem.value in mapping:
            elem.value = mapping[elem.value]

    for ds in datasets:
        ds.walk(swap)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return str(datasets[0].StudyInstanceUID), datasets


def send(datasets: list, port: int) -> float:
    """C-STORE every dataset over one association; perf_counter() when the last response arrived."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="LLNM")
    if not assoc.is_established:
        raise RuntimeError(f"association to 127.0.0.1:{port} refused")
    last = 0.0
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            last = time.perf_counter()
            if not status or status.Status != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        assoc.release()
    return last


def sr_in_orthanc(orthanc: Orthanc, study_uid: str) -> bool:
    found = orthanc.post("/tools/find", {"Level": "Series",
                                         "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
    # the report SR we sent is Modality SR too: ours is the series that is not the template's report
    for series in found:
        tags = orthanc.get(f"/series/{series}")["MainDicomTags"]
        if str(tags.get("SeriesNumber", "")) == "9702":
            return True
    return False


def stage_means(port: int) -> dict[str, float]:
    """Mean seconds per llnm_stage_seconds stage from a worker's /metrics."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    sums = {m[0]: float(m[1]) for m in re.findall(r'llnm_stage_seconds_sum\{stage="([^"]+)"\} (\S+)', text)}
    counts = {m[0]: float(m[1]) for m in re.findall(r'llnm_stage_seconds_count\{stage="([^"]+)"\} (\S+)', text)}
    return {k: round(sums[k] / counts[k], 3) for k in sums if counts.get(k)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=7, help="timed studies per stack")
    parser.add_argument("--series-idle", type=float, default=1.0, help="LLNM_SERIES_IDLE_S")
    parser.add_argument("--study-idle", type=float, default=1.0, help="LLNM_STUDY_IDLE_S")
    parser.add_argument("--poll", type=float, default=0.02, help="Orthanc poll interval, s")
    parser.add_argument("--timeout", type=float, default=120.0, help="per study, s")
    parser.add_argument("--stacks", default="embedded,celery_triton",
                        help="comma-separated: embedded, embedded_ortN (LLNM_ORT_THREADS=N), celery_triton")
    args = parser.parse_args()
    stacks = [s for s in args.stacks.split(",") if s]
    if "celery_triton" in stacks and triton_root() is None:
        raise SystemExit("tritonserver not installed: run scripts/triton-env.sh")

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "series_idle_s": args.series_idle, "study_idle_s": args.study_idle,
                     "idle_s": args.series_idle + args.study_idle, "studies": args.studies}
    tmp = Path(tempfile.mkdtemp(prefix="llnm-e2e-bench-"))
    services: list[Service] = []
    triton = orthanc = None
    prefix = f"llnm-bench-{uuid.uuid4().hex[:10]}:"
    try:
        template = analysable_study(tmp / "phantom", candidates=6)
        orthanc = Orthanc(tmp / "orthanc").start()
        base = dict(os.environ)
        base.update({
            "LLNM_ALLOWED_AES": "MODALITY", "LLNM_BIND_ADDRESS": "127.0.0.1", "LLNM_AE_TITLE": "LLNM",
            "LLNM_SERIES_IDLE_S": str(args.series_idle), "LLNM_STUDY_IDLE_S": str(args.study_idle),
            "LLNM_DESTINATIONS": orthanc.node, "LLNM_SENDER_AE_TITLE": "LLNM", "LLNM_LOG_FORMAT": "json",
            "LLNM_LOG_LEVEL": "WARNING", "LLNM_MIN_FREE_DISK_MB": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "LLNM_MODEL_REPOSITORY": str(REPO / "model_repository"),
        })
        ports: dict[str, int] = {}
        metrics_ports: dict[str, int] = {}
        for stack in (s for s in stacks if s.startswith("embedded")):
            # embedded_ortN: the same with LLNM_ORT_THREADS=N (a variant of the default, side by side)
            threads = stack.removeprefix("embedded_ort") if stack != "embedded" else ""
            port, metrics = free_port(), free_port()
            env = dict(base, LLNM_DATA_DIR=str(tmp / stack), LLNM_PORT=str(port), LLNM_METRICS_PORT=str(metrics))
            if threads:
                env["LLNM_ORT_THREADS"] = threads
            serve = Service(stack, [str(VENV_BIN / "llnm"), "serve"], env, tmp).start()
            services.append(serve.wait_ready(metrics, 120))
            ports[stack] = port
            metrics_ports[stack] = metrics
        if "celery_triton" in stacks:
            triton = TritonServer(REPO / "model_repository", tmp / "triton", MODELS).start(timeout_s=180)
            port = free_port()
            env = dict(base, LLNM_DATA_DIR=str(tmp / "celery"), LLNM_PORT=str(port),
                       LLNM_BROKER_URL="redis://127.0.0.1:6379/0", LLNM_BROKER_KEY_PREFIX=prefix,
                       LLNM_QUEUE_NAME="llnm-bench", LLNM_INFERENCE_BACKEND="triton",
                       LLNM_TRITON_URL=triton.http_url)
            lm, wm = free_port(), free_port()
            services.append(Service("listener", [str(VENV_BIN / "llnm"), "listener"],
                                    dict(env, LLNM_METRICS_PORT=str(lm)), tmp).start().wait_ready(lm, 120))
            services.append(Service("worker", [str(VENV_BIN / "llnm"), "worker"],
                                    dict(env, LLNM_METRICS_PORT=str(wm)), tmp).start().wait_ready(wm, 120))
            ports["celery_triton"] = port
            metrics_ports["celery_triton"] = wm

        def one(stack: str) -> dict[str, float]:
            study_uid, datasets = reidentified(template)
            last = send(datasets, ports[stack])
            found = wait_for(lambda: sr_in_orthanc(orthanc, study_uid), args.timeout, args.poll)
            if not found:
                raise RuntimeError(f"{stack}: no SR in Orthanc after {args.timeout} s")
            total = time.perf_counter() - last
            return {"total_s": total, "beyond_idle_s": total - results["idle_s"]}

        for stack in stacks:
            results.setdefault("warm_up_s", {})[stack] = round(one(stack)["total_s"], 3)
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in stacks}
        for _ in range(args.studies):
            for stack in stacks:
                runs[stack].append(one(stack))
        for stack in stacks:
            beyond = [r["beyond_idle_s"] for r in runs[stack]]
            results[stack] = {"median_beyond_idle_s": round(statistics.median(beyond), 3),
                              "median_total_s": round(statistics.median(r["total_s"] for r in runs[stack]), 3),
                              "min_s": round(min(beyond), 3), "max_s": round(max(beyond), 3),
                              "all_beyond_idle_s": [round(b, 3) for b in beyond]}
        for stack in stacks:
            try:
                results[stack]["worker_stage_mean_s"] = stage_means(metrics_ports[stack])
            except OSError as exc:
                results[stack]["worker_stage_mean_s"] = f"unavailable: {exc}"
        if "embedded" in stacks and "celery_triton" in stacks:
            results["celery_triton_over_embedded"] = round(
                results["celery_triton"]["median_beyond_idle_s"] / results["embedded"]["median_beyond_idle_s"], 2)
    finally:
        for s in reversed(services):
            s.stop()
        if triton is not None:
            triton.stop()
        if orthanc is not None:
            orthanc.stop()
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=6379)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
