"""Fixtures of the viewer tests: one Orthanc + OHIF stack per test (empty study list); `walk`, which uploads a
study and walks it through OHIF in chromium (study list, image, SR, SEG, key image), and `walk_many`, which
walks several studies in one browser session."""

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


@pytest.fixture
def walk_many(stack: Stack) -> Callable[..., dict[str, Any]]:
    """walk_many(files, walks, name, **job) -> what the driver saw: several studies (all of `files` uploaded
    first) walked one after the other in one browser session; out["walks"][i] is walks[i]'s record.
    Each walk is a dict of the driver's per-study keys (study, sr, seg, key...) with its own prefix."""
    viewer_env.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)

    def run(files: list[Path], walks: list[dict[str, Any]], name: str, **job: Any) -> dict[str, Any]:
        for f in files:
            stack.orthanc.upload(f)
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=stack.workdir))
        total_s = 60 + 180 * len(walks)
        spec = {
            "url": stack.viewer.url, "walks": walks, "outDir": str(viewer_env.ARTIFACTS_DIR),
            "profileDir": str(profile), "chromium": viewer_env.CHROMIUM,
            "stepTimeoutMs": 60000, "totalTimeoutMs": total_s * 1000, **job,
        }
        result = viewer_env.run_driver(spec, timeout_s=total_s + 30)
        (viewer_env.ARTIFACTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=1))
        shutil.rmtree(profile, ignore_errors=True)
        return result

    return run
