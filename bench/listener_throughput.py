"""Listener throughput: dcmtk storescu -> `llnm` listener (durable spool + completion bookkeeping).

Sends N RGB ultrasound instances of about 230 KB (design.md section 8's anchor) over 1 and over 4
associations, with TCP_NODELAY=1 on the sender, and prints instances/s. Run:
    .venv/bin/python bench/listener_throughput.py [N]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from llnm.config import Settings
from llnm.listener.app import Listener


def instance(study: str, series: str, rng: np.random.Generator) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientID = "US", "BENCH"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = 240, 320  # 240*320*3 = 230 KB
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8).tobytes()
    return ds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n: int, associations: int, workdir: Path, files: list[Path]) -> float:
    settings = Settings(data_dir=workdir / f"data-{associations}", port=free_port(), bind_address="127.0.0.1",
                        series_idle_s=3600, study_idle_s=3600, metrics_port=0, min_free_disk_mb=100,
                        max_instances_per_study=100000, max_associations=associations + 2)
    listener = Listener(settings, lambda uid: None).start()
    env = dict(os.environ, TCP_NODELAY="1")
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", "LLNM", "127.0.0.1", str(settings.port), *map(str, c)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in chunks]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    stored = len(list(settings.spool_dir.rglob("*.dcm")))
    listener.stop()
    assert codes == [0] * associations and stored == n, (codes, stored)
    return n / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        src = workdir / "src"
        src.mkdir()
        study, series = generate_uid(), generate_uid()
        files = []
        for i in range(n):
            path = src / f"{i:05d}.dcm"
            instance(study, series, rng).save_as(path, enforce_file_format=True)
            files.append(path)
        for associations in (1, 4):
            rate = run(n, associations, workdir, files)
            print(f"{n} instances x 230 KB, {associations} association(s): {rate:.0f} instances/s")


if __name__ == "__main__":
    main()
