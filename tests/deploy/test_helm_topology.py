"""The chart's topology, for the defaults and every helm/llnm/ci/*-values.yaml: the listener and its workers
are one pod on one spool volume (the spool holds the SQLite WAL audit trail, which needs every process
that opens it on one host, and a ReadWriteOnce volume attaches to one node), nothing else mounts the spool,
no spool is ReadWriteMany, a disabled persistence still gives the workers the listener's spool, Triton is
what scales out (on its own queue time), and the `helm test` pod reaches what it checks."""

from __future__ import annotations

import json

import pytest
import yaml
from deploy_support import CHART, DEPLOY, VALUES_SETS, by_kind, pod_specs, render_chart

pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")

SPOOL = "/var/lib/llnm"


def _pods(docs: list[dict]) -> dict[str, dict]:
    """Every pod spec the chart renders: workloads and bare Pods (the helm test hook)."""
    pods = pod_specs(docs)
    pods.update({d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Pod"})
    return pods


def _llnm_containers(spec: dict, command: str) -> list[dict]:
    return [c for c in spec["containers"] if c.get("args", [None])[0] == command]


def _spool_volume(spec: dict, container: dict) -> dict:
    name = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == SPOOL)
    return next(v for v in spec["volumes"] if v["name"] == name)


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_listener_and_workers_are_one_pod_on_one_spool(rendered, values_set):
    docs = rendered[values_set]
    pods = _pods(docs)
    with_listener = [name for name, spec in pods.items() if _llnm_containers(spec, "listener")]
    with_workers = [name for name, spec in pods.items() if _llnm_containers(spec, "worker")]
    assert with_listener == ["llnm-listener"] and with_workers == ["llnm-listener"], (with_listener, with_workers)
    sts = by_kind(docs, "StatefulSet")["llnm-listener"]
    assert sts["spec"]["replicas"] == 1, "one listener: its completion timers live in its process"
    spec = pods["llnm-listener"]
    listener = _llnm_containers(spec, "listener")
    workers = _llnm_containers(spec, "worker")
    assert len(listener) == 1 and workers
    volumes = [_spool_volume(spec, c) for c in listener + workers]
    assert all(v == volumes[0] for v in volumes), "every process of the pod sees the same spool"
    # nothing scales the listener pod, and no PDB pins it (a drain must be able to move it)
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] != "llnm-listener"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        assert not pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), pdb["metadata"]["name"]


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_other_pod_mounts_the_spool_and_none_is_read_write_many(rendered, values_set):
    docs = rendered[values_set]
    pods = _pods(docs)
    spool = _spool_volume(pods["llnm-listener"], _llnm_containers(pods["llnm-listener"], "listener")[0])
    claim = spool.get("persistentVolumeClaim", {}).get("claimName")
    for name, spec in pods.items():
        if name == "llnm-listener":
            continue
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert SPOOL not in {m["mountPath"] for m in c.get("volumeMounts", [])}, f"{name}/{c['name']}"
        if claim:
            claims = {v.get("persistentVolumeClaim", {}).get("claimName") for v in spec.get("volumes", [])}
            assert claim not in claims, f"{name} mounts the spool claim (ReadWriteOnce: it would pin the node)"
    for pvc in by_kind(docs, "PersistentVolumeClaim").values():
        assert "ReadWriteMany" not in pvc["spec"]["accessModes"], "the SQLite audit trail on a network file system"
        assert set(pvc["spec"]["accessModes"]) <= {"ReadWriteOnce", "ReadWriteOncePod"}


def test_disabled_persistence_still_shares_one_spool():
    """persistence.enabled=false: an emptyDir, but the listener's: the workers process what it receives."""
    docs = render_chart(CHART, {"persistence": {"enabled": False}})
    spec = pod_specs(docs)["llnm-listener"]
    volumes = [_spool_volume(spec, c) for c in spec["containers"]]
    assert volumes[0] == {"name": "spool", "emptyDir": {}} and all(v == volumes[0] for v in volumes)
    assert not by_kind(docs, "PersistentVolumeClaim")


def test_read_write_once_pod_spool_is_rendered_for_the_one_pod():
    docs = render_chart(CHART, {"persistence": {"accessMode": "ReadWriteOncePod"}})
    assert by_kind(docs, "PersistentVolumeClaim")["llnm-spool"]["spec"]["accessModes"] == ["ReadWriteOncePod"]
    mounts = [name for name, spec in _pods(docs).items()
              if any(v.get("persistentVolumeClaim", {}).get("claimName") == "llnm-spool"
                     for v in spec.get("volumes", []))]
    assert mounts == ["llnm-listener"], "a second pod on a ReadWriteOncePod claim would stay Pending"


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_each_process_has_its_own_metrics_port_and_probes(rendered, values_set):
    docs = rendered[values_set]
    spec = pod_specs(docs)["llnm-listener"]
    seen = set()
    for c in spec["containers"]:
        env = {e["name"]: e.get("value") for e in c["env"]}
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        name = {"listener": "metrics", "console": "metrics-console"}.get(c["name"]) or \
            f"metrics-w{c['name'].split('-')[1]}"
        assert int(env["LLNM_METRICS_PORT"]) == ports[name]
        seen.add(ports[name])
        if c["name"] == "console":  # probed on the web server itself (its metrics server is another thread);
            # liveness only: its readiness would be the listener pod's, in the DICOM Service
            assert c["livenessProbe"]["httpGet"] == {"path": "/login", "port": "console"}
            assert "readinessProbe" not in c
            continue
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": name}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": name}
    assert len(seen) == len(spec["containers"])
    console = by_kind(docs, "Service")["llnm-console-metrics"]
    assert [p["targetPort"] for p in console["spec"]["ports"]] == ["metrics-console"]
    # the worker metrics Service exposes every worker process; its ServiceMonitor scrapes each
    svc = by_kind(docs, "Service")["llnm-worker-metrics"]
    workers = [c for c in spec["containers"] if c["name"].startswith("worker-")]
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == [c["ports"][0]["name"] for c in workers]
    monitor = by_kind(docs, "ServiceMonitor").get("llnm-worker")
    if monitor:
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [c["ports"][0]["name"] for c in workers]


def test_triton_scales_on_its_queue_time_through_prometheus_adapter(rendered):
    docs = rendered["all-values.yaml"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["llnm-triton"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llnm-triton"}
    metric = hpa["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    adapter = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus-adapter-values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # Triton is scraped with the labels the rule keys on (the ServiceMonitor keeps pod and namespace)
    assert "llnm-triton" in by_kind(docs, "ServiceMonitor")
    assert not by_kind(rendered["default"], "HorizontalPodAutoscaler"), "autoscaling is opt-in"


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_helm_test_pod_checks_the_listener_and_every_worker(rendered, values_set):
    docs = rendered[values_set]
    pod = by_kind(docs, "Pod")["llnm-smoke-test"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["resources"]["limits"]
    args = c["args"]
    assert args[0] == "smoke-test"
    opts: dict[str, list[str]] = {}
    for flag, value in zip(args[1::2], args[2::2]):
        opts.setdefault(flag, []).append(value)
    # --to names the DICOM Service and its port, with ;tls when the listener speaks TLS
    target = opts["--to"][0]
    ae, address = target.split(";")[0].split("@")
    host, port = address.split(":")
    svc = by_kind(docs, "Service")["llnm-listener"]
    assert host == "llnm-listener.pacs.svc" and int(port) == svc["spec"]["ports"][0]["port"]
    tls = "LLNM_TLS_CERT" in {e["name"] for e in pod_specs(docs)["llnm-listener"]["containers"][0]["env"]}
    assert target.endswith(";tls") == tls
    # one metrics URL per worker process, each a port of the worker metrics Service
    ports = {p["port"] for p in by_kind(docs, "Service")["llnm-worker-metrics"]["spec"]["ports"]}
    urls = opts["--metrics"]
    workers = [c for c in pod_specs(docs)["llnm-listener"]["containers"] if c["name"].startswith("worker-")]
    assert len(urls) == len(workers)
    assert {int(u.rsplit(":", 1)[1]) for u in urls} == ports
    assert all(u.startswith("http://llnm-worker-metrics.pacs.svc:") for u in urls)
    # the NetworkPolicy (when on) lets this pod in
    policy = by_kind(docs, "NetworkPolicy").get("llnm-listener")
    if policy:
        peers = [p for rule in policy["spec"]["ingress"] for p in rule["from"]]
        assert {"podSelector": {"matchLabels": {"llnm.io/helm-test": "llnm"}}} in peers
        assert pod["metadata"]["labels"]["llnm.io/helm-test"] == "llnm"
    # its calling AE passes the allow-list where the values set has one
    config = by_kind(docs, "ConfigMap")["llnm"]["data"]
    allowed = [a.split("@")[0].split(";")[0].strip() for a in config.get("LLNM_ALLOWED_AES", "").split(",") if a.strip()]
    assert not allowed or opts["--aet"][0] in allowed


def test_values_schema_knows_exactly_the_settings_fields(settings_env_names):
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == settings_env_names


def test_reloader_restarts_on_the_secrets_read_into_the_environment(rendered):
    docs = rendered["all-values.yaml"]
    sts = by_kind(docs, "StatefulSet")
    names = sts["llnm-listener"]["metadata"]["annotations"]["secret.reloader.stakater.com/reload"].split(",")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in pod_specs(docs)["llnm-listener"]["containers"]
            for e in c["env"] if "valueFrom" in e}
    assert set(names) == refs and "llnm-tls" not in names  # TLS files are re-read by the services
    assert sts["llnm-redis"]["metadata"]["annotations"]["secret.reloader.stakater.com/reload"] == "llnm-redis"
    assert "annotations" not in by_kind(rendered["default"], "StatefulSet")["llnm-listener"]["metadata"]

