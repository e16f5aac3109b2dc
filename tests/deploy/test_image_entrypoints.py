"""The `llnm` commands the images, compose, the chart and the runbooks run are real commands with
valid arguments, run through the same console script (`llnm`) the images use; the long-running
ones start for real, answer /healthz and /metrics, and stop cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, DEPLOY, REPO, VENV_BIN, render_chart, values_for

LLNM = str(VENV_BIN / "llnm")


def _dockerfile_commands() -> list[tuple[str, list[str]]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out, entrypoint, stage = [], None, None
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            stage, entrypoint = m.group(1), None
        elif line.startswith("ENTRYPOINT"):
            entrypoint = json.loads(line.split(None, 1)[1])
        elif line.startswith("CMD") and entrypoint == ["llnm"]:
            out.append((f"Dockerfile {stage} CMD", json.loads(line.split(None, 1)[1])))
        elif line.startswith("RUN") and re.search(r"(^|&&\s*|RUN\s+)llnm\s", line):
            for part in re.findall(r"(?:^RUN\s+|&&\s*)(llnm\s[^&]+)", line):
                out.append((f"Dockerfile {stage} RUN", shlex.split(part)[1:]))
    return out


def _compose_commands() -> list[tuple[str, list[str]]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return [(f"compose {name}", s["command"]) for name, s in compose["services"].items()
            if "build" in s and "entrypoint" not in s and "command" in s]


def _helm_commands() -> list[tuple[str, list[str]]]:
    out = []
    for values in ("default", "all-values.yaml"):
        for doc in render_chart(CHART, values_for(values)):
            spec = doc.get("spec", {}).get("template", {}).get("spec")
            for c in (spec or {}).get("containers", []):
                if c["image"].rsplit(":", 1)[0].endswith("llnm") and "command" not in c:
                    out.append((f"helm {doc['metadata']['name']}", c["args"]))
    return out


def _runbook_commands() -> list[tuple[str, list[str]]]:
    """`llnm ...` in the alert runbooks and the operations guide, placeholders filled in."""
    texts = {"alerts.yml": (DEPLOY / "prometheus" / "alerts.yml").read_text()}
    guide = REPO / "docs" / "operations.md"
    if guide.exists():
        texts["operations.md"] = guide.read_text()
    out = []
    for where, text in texts.items():
        for cmd in re.findall(r"`llnm ([^`]+)`", text):
            out.append((where, shlex.split(re.sub(r"<[^>]+>", "1.2.3.4", cmd))))
    return out


def _all_commands() -> list[tuple[str, list[str]]]:
    return _dockerfile_commands() + _compose_commands() + _helm_commands() + _runbook_commands()


def test_the_deploy_files_run_the_commands_they_should():
    found = {(where.split()[0], argv[0]) for where, argv in _all_commands()}
    for expected in [("Dockerfile", "serve"), ("Dockerfile", "export"), ("compose", "listener"),
                     ("compose", "worker"), ("helm", "listener"), ("helm", "worker")]:
        assert expected in found, expected


@pytest.mark.parametrize("where,argv", _all_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_command_and_arguments_are_accepted_by_the_cli(where, argv):
    from llnm.cli import COMMANDS

    assert argv[0] in COMMANDS, f"{where}: `llnm {argv[0]}` is not a command of llnm.cli"
    module_name, help_text = COMMANDS[argv[0]]
    try:
        module = importlib.import_module(f"llnm.cli.{module_name}")
    except ModuleNotFoundError as exc:
        pytest.fail(f"{where}: `llnm {argv[0]}` needs services/llnm/cli/{module_name}.py, not there yet ({exc})")
    parser = argparse.ArgumentParser(prog=f"llnm {argv[0]}", exit_on_error=False)
    module.configure(parser)
    if len(argv) == 1 and where.endswith((".md", ".yml")):
        return  # the guide names a command (`llnm train`) without running it
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exc:  # --help exits 0; a refused argument exits 2
        assert exc.code == 0, f"{where}: `llnm {' '.join(argv)}` is refused"
    except argparse.ArgumentError as exc:
        pytest.fail(f"{where}: `llnm {' '.join(argv)}` is refused: {exc}")


@pytest.mark.parametrize("command", sorted({argv[0] for _, argv in _all_commands()}))
def test_console_script_runs_each_command(command):
    """The console script the images' ENTRYPOINT runs."""
    result = subprocess.run([LLNM, command, "--help"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"llnm {command}" in result.stdout


# -- the long-running commands, for real -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.e2e
@pytest.mark.parametrize("service", ["listener", "worker", "serve"])
def test_service_starts_answers_health_and_stops_on_sigterm(service, tmp_path: Path):
    """The command compose and the chart run (`llnm listener` / `llnm worker`) and the image's
    default (`llnm serve`), with the environment they set, on free loopback ports."""
    if service != "serve" and not _redis_up():
        pytest.skip("needs Redis on 127.0.0.1:6379 (scripts/test-services.sh starts it)")
    metrics_port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", YOLO_OFFLINE="1", PYTHONUNBUFFERED="1",
               LLNM_DATA_DIR=str(tmp_path / "data"), LLNM_PORT=str(_free_port()),
               LLNM_METRICS_PORT=str(metrics_port), LLNM_BIND_ADDRESS="127.0.0.1", LLNM_LOG_FORMAT="json",
               LLNM_BROKER_URL="" if service == "serve" else "redis://127.0.0.1:6379/15", LLNM_QUEUE_NAME="llnm",
               LLNM_BROKER_KEY_PREFIX=f"deploy-test-{os.getpid()}-{service}:")
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen([LLNM, service], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _get(f"http://127.0.0.1:{metrics_port}/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert status == 200, (tmp_path / "log").read_text()[-3000:]
        if service == "worker":
            # Celery takes over SIGTERM (warm shutdown) before its consumer declares the queue in Redis
            import redis

            client = redis.Redis.from_url(env["LLNM_BROKER_URL"])
            binding = f"{env['LLNM_BROKER_KEY_PREFIX']}_kombu.binding.llnm"
            while time.monotonic() < deadline and proc.poll() is None and not client.exists(binding):
                time.sleep(0.3)
            client.close()
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
        code, body = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert code == 200 and "llnm_" in body
        code, body = _get(f"http://127.0.0.1:{metrics_port}/readyz")
        assert code in (200, 503) and "checks" in json.loads(body)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        if env["LLNM_BROKER_URL"]:
            import redis

            client = redis.Redis.from_url(env["LLNM_BROKER_URL"])
            keys = list(client.scan_iter(match=env["LLNM_BROKER_KEY_PREFIX"] + "*"))
            if keys:
                client.delete(*keys)
            client.close()
