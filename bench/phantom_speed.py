"""Phantom generation speed: in-memory studies (generate_study) and a written set (DICOM + truth).

    .venv/bin/python bench/phantom_speed.py [N]

Prints CPU seconds per study (process time, so a busy machine inflates wall time but not this much)
and wall seconds per study, at the default 600 x 800 frame.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from llnm.phantom import generate_study, write_phantom_set


def main(n: int) -> None:
    generate_study(0, 0)  # builds the speckle banks once, as a long run does
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(1, n + 1):
        generate_study(0, i)
    in_memory = ((time.process_time() - cpu) / n, (time.perf_counter() - wall) / n)
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = time.process_time(), time.perf_counter()
        write_phantom_set(Path(tmp) / "set", studies=n, seed=0)
        written = ((time.process_time() - cpu) / n, (time.perf_counter() - wall) / n)
    print(json.dumps({"studies": n, "in_memory_cpu_s": round(in_memory[0], 3),
                      "in_memory_wall_s": round(in_memory[1], 3), "written_cpu_s": round(written[0], 3),
                      "written_wall_s": round(written[1], 3)}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
