"""Fixtures of the viewer tests: one Orthanc + OHIF stack per test (empty study list), and `walk`, which uploads a
study and walks it through OHIF in chromium (study list, image, SR, SEG, key image)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import viewer_env  # noqa: E402


def _need_tools() -> None:
    missing = viewer_env.missing()
    if missing:
        message = "viewer test environment incomplete: " + "; ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Stack:
    orthanc: viewer_env.Orthanc
    viewer: viewer_env.ViewerServer
    workdir: Path


@pytest.fixture
def stack() -> Iterator[Stack]:
    _need_tools()
    workdir = Path(tempfile.mkdtemp(prefix="llnm-viewer-"))
    orthanc = viewer_env.Orthanc(workdir / "orthanc").start()
    viewer = viewer_env.ViewerServer(orthanc).start()
    try:
        yield Stack(orthanc, viewer, workdir)
    finally:
        viewer.stop()
        orthanc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def walk(stack: Stack) -> Callable[..., dict[str, Any]]:
    """walk(files, study_uid, name, **job) -> what the driver saw; screenshots in artifacts/viewer/."""
    viewer_env.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)

    def run(files: list[Path], study_uid: str, name: str, **job: Any) -> dict[str, Any]:
        for f in files:
            stack.orthanc.upload(f)
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=stack.workdir))
        spec = {
            "url": stack.viewer.url, "study": study_uid, "outDir": str(viewer_env.ARTIFACTS_DIR),
            "prefix": name, "profileDir": str(profile), "chromium": viewer_env.CHROMIUM,
            "stepTimeoutMs": 60000, "totalTimeoutMs": 170000, **job,
        }
        result = viewer_env.run_driver(spec, timeout_s=200)
        (viewer_env.ARTIFACTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=1))
        shutil.rmtree(profile, ignore_errors=True)
        return result

    return run
