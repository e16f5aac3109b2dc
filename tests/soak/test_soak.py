"""The bounded soak CI runs: 200 studies over 4 associations to real `llnm listener` + 2 `llnm worker`
processes (ONNX Runtime in-process) on a private Redis, results to a real Orthanc, with every fault of
tests/soak/soak.py during the load. The JSON report (counts, latency percentiles, faults) is written to
$LLNM_SOAK_REPORT (default artifacts/soak/ci-report.json) and printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import soak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPORT = Path(os.environ.get("LLNM_SOAK_REPORT") or soak.REPO_ROOT / "artifacts" / "soak" / "ci-report.json")


@pytest.mark.timeout(1800)  # the load is bounded; the drain waits only while studies keep finishing
def test_load_with_faults_loses_nothing_and_delivers_each_result_once(tmp_path: Path, capsys):
    why = soak.services_available()
    if why:
        pytest.skip(why)
    cfg = soak.Config(studies=int(os.environ.get("LLNM_SOAK_STUDIES", "200")), associations=4, workers=2,
                      send_seconds=90.0, workdir=tmp_path / "soak")
    report = soak.run_soak(cfg)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    with capsys.disabled():
        print("\nsoak report:", REPORT)
        print(json.dumps({k: report[k] for k in ("counts", "losses", "latency_s", "seconds", "faults", "checks")},
                         indent=1))
    failed = {k: v for k, v in report["checks"].items() if v != "ok"}
    assert not failed, (failed, report["counts"])
    assert report["losses"] == 0
    fault_names = [f["fault"] for f in report["faults"]]
    for needed in ("worker SIGKILL", "redis stopped (SIGTERM)", "orthanc stopped", "listener SIGKILL"):
        assert needed in fault_names, fault_names
    assert fault_names.count("worker SIGKILL") >= 2
    assert report["counts"]["studies_made"] >= 200 or os.environ.get("LLNM_SOAK_STUDIES")
    assert report["counts"]["multiframe_studies"] and report["counts"]["real_file_studies"]
