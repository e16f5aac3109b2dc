"""Ingest: instances/s stored by the `llnm` listener against dcmtk storescp, from the same dcmtk
storescu over loopback, 1 and 4 associations, small and large instances; listener peak RSS.

    nice -n 10 .venv/bin/python bench/ingest_vs_storescp.py --small 40 --large 4 --repeats 3

- small: 600 x 800 RGB single-frame US images (1.44 MB each);
- large: 600 x 800 RGB US multi-frame images of `--frames` frames (20 -> 28.8 MB each).
For each size and association count the two receivers run alternately `--repeats` times on the same
files (median instances/s each, so slow phases of the shared machine hit both). storescp runs with
--fork (one process per association, as dcmtk does it); the listener (llnm.listener.app.Listener,
with its durable write: temp file, fsync, rename, audit row) runs in a spawned child process, so its
VmHWM (peak RSS) is the listener's alone. storescp does not fsync: the ratio includes that durability.
--chunked adds, in the same repeats, a listener process with pynetdicom's STORE_RECV_CHUNKED_DATASET
set (an experiment on peak RSS with multi-frame instances; the listener does not set it itself).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def make_instance(study: str, series: str, frames: int, rng: np.random.Generator) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME if frames > 1 else US_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientID = "US", "BENCH"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = 600, 800
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 255, (frames, 600, 800, 3), dtype=np.uint8).tobytes()
    return ds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _listener_child(data_dir: str, port: int, associations: int, chunked: bool, ready, stop) -> None:
    from pynetdicom import _config

    from llnm.config import Settings

    _config.STORE_RECV_CHUNKED_DATASET = chunked
    from llnm.listener.app import Listener

    settings = Settings(data_dir=Path(data_dir), port=port, bind_address="127.0.0.1", series_idle_s=3600,
                        study_idle_s=3600, metrics_port=0, min_free_disk_mb=100,
                        max_instances_per_study=100000, max_associations=associations + 2)
    listener = Listener(settings, lambda uid: None).start()
    ready.set()
    stop.wait()
    listener.stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send(port: int, files: list[Path], associations: int) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    chunks = [files[i::associations] for i in range(associations)]
    if not all(chunks):
        raise ValueError(f"{len(files)} instances cannot fill {associations} associations")
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", "LLNM", "127.0.0.1", str(port), *map(str, c)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in chunks]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    codes = [p.returncode for p in procs]
    if codes != [0] * len(chunks):
        raise RuntimeError(f"storescu failed: {codes}: {[e[-400:] for e in errors if e]}")
    return len(files) / elapsed


def run_storescp(workdir: Path, files: list[Path], associations: int) -> float:
    out = Path(tempfile.mkdtemp(dir=workdir))
    port = free_port()
    proc = subprocess.Popen(["storescp", "--fork", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        rate = send(port, files, associations)
        deadline = time.monotonic() + 10  # forked children may still be closing their files
        while len(list(out.iterdir())) < len(files) and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(list(out.iterdir())) != len(files):
            raise RuntimeError("storescp stored fewer files than sent")
        return rate
    finally:
        proc.terminate()
        proc.wait()


def run_listener(workdir: Path, files: list[Path], associations: int, chunked: bool) -> tuple[float, float, float]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    data_dir = Path(tempfile.mkdtemp(dir=workdir))
    port = free_port()
    child = ctx.Process(target=_listener_child, args=(str(data_dir), port, associations, chunked, ready, stop))
    child.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("listener did not start")
        wait_port(port)
        idle_rss = peak_rss_mb(child.pid)
        rate = send(port, files, associations)
        rss = peak_rss_mb(child.pid)
        stored = len(list((data_dir / "spool").rglob("*.dcm")))
        if stored != len(files):
            raise RuntimeError(f"listener stored {stored} of {len(files)}")
        return rate, rss, idle_rss
    finally:
        stop.set()
        child.join(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=40, help="number of small instances")
    parser.add_argument("--large", type=int, default=4, help="number of multi-frame instances")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="small,large")
    parser.add_argument("--chunked", action="store_true",
                        help="also a listener with pynetdicom's STORE_RECV_CHUNKED_DATASET (experiment)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "repeats": args.repeats, "chunked": args.chunked}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sets = {}
        for kind, count, frames in (("small", args.small, 1), ("large", args.large, args.frames)):
            if kind not in args.sizes.split(","):
                continue
            src = workdir / kind
            src.mkdir()
            study, series = generate_uid(), generate_uid()
            sets[kind] = []
            for i in range(count):
                path = src / f"{i:05d}.dcm"
                make_instance(study, series, frames, rng).save_as(path, enforce_file_format=True)
                sets[kind].append(path)
            results[f"{kind}_instance_mb"] = round(path.stat().st_size / 1e6, 2)
        for kind, files in sets.items():
            for associations in (1, 4):
                base, ours, rss, idle, chunked, chunked_rss = [], [], [], [], [], []
                for _ in range(args.repeats):
                    base.append(run_storescp(workdir, files, associations))
                    rate, peak, idle_rss = run_listener(workdir, files, associations, False)
                    ours.append(rate)
                    rss.append(peak)
                    idle.append(idle_rss)
                    if args.chunked:
                        rate, peak, _ = run_listener(workdir, files, associations, True)
                        chunked.append(rate)
                        chunked_rss.append(peak)
                b, o = statistics.median(base), statistics.median(ours)
                entry = {"instances": len(files), "storescp_per_s": round(b, 1), "listener_per_s": round(o, 1),
                         "listener_over_storescp": round(o / b, 2), "listener_peak_rss_mb": round(max(rss), 1),
                         "listener_idle_rss_mb": round(statistics.median(idle), 1)}
                if args.chunked:
                    c = statistics.median(chunked)
                    entry.update(chunked_listener_per_s=round(c, 1), chunked_over_storescp=round(c / b, 2),
                                 chunked_peak_rss_mb=round(max(chunked_rss), 1))
                results[f"{kind}_{associations}_assoc"] = entry
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
