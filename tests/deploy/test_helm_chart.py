"""The Helm chart (helm/llnm): lints, renders with the defaults and with every optional part
enabled, every rendered manifest is valid against the Kubernetes schemas, and the parts a hospital
relies on (GPU Triton, autoscaling, network policy, probes, security) are really in it."""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import CHART, DEPLOY, REPO, VALUES_SETS, by_kind, pod_specs, render_chart, values_for

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")

# kubernetes-validate reads each schema file again for every object; read each once.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]

_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
_SELECTOR = {"type": "object", "properties": {"matchLabels": {"type": "object",
                                                              "additionalProperties": {"type": "string"}}}}
#: Schemas of the custom resources the chart renders, from the CRDs of prometheus-operator
#: (monitoring.coreos.com/v1), cut to the fields the chart uses.
CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {"selector": _SELECTOR, "jobLabel": {"type": "string"},
                           "namespaceSelector": {"type": "object"},
                           "endpoints": {"type": "array", "minItems": 1, "items": {
                               "type": "object", "additionalProperties": False,
                               "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                              "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                              "relabelings": {"type": "array", "items": {
                                                  "type": "object", "additionalProperties": False,
                                                  "properties": {"action": {"enum": ["replace", "keep", "drop",
                                                                                     "labelmap"]},
                                                                 "targetLabel": {"type": "string"},
                                                                 "replacement": {"type": "string"},
                                                                 "sourceLabels": {"type": "array"}}}}}}}}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "interval": {"type": "string"},
                               "rules": {"type": "array", "items": {
                                   "type": "object", "required": ["expr"], "additionalProperties": False,
                                   "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                                  "expr": {"type": "string"}, "for": {"type": "string"},
                                                  "labels": {"type": "object",
                                                             "additionalProperties": {"type": "string"}},
                                                  "annotations": {"type": "object",
                                                                  "additionalProperties": {"type": "string"}}}}}}}}}}}},
}


def validate_manifest(doc: dict, kube_version: str) -> None:
    """Raise if `doc` is not a valid object of its kind (strict: unknown fields are errors)."""
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        jsonschema.validate(doc, crd)
    else:
        kubernetes_validate.validate(doc, kube_version, strict=True)


def _is_llnm_image(image: str) -> bool:
    return image.rsplit(":", 1)[0].endswith("llnm")


# -- lint, render, validate ------------------------------------------------------------------------------
@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_chart_lints_clean_in_strict_mode(values_set):
    report = helm.lint(str(CHART), values_for(values_set), strict=True, namespace="pacs")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("values_set", VALUES_SETS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(rendered, values_set, kube_version):
    docs = rendered[values_set]
    assert docs
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "two objects of the same kind and name"
    for doc in docs:
        try:
            validate_manifest(doc, kube_version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({values_set}, k8s {kube_version}): {exc}")


def test_validation_catches_a_broken_template(tmp_path):
    """The checks above fail when a template is broken: a render error, invalid YAML, or a
    manifest that Kubernetes would reject."""
    chart = tmp_path / "llnm"
    shutil.copytree(CHART, chart, symlinks=False)

    broken = chart / "templates" / "zz-broken.yaml"
    broken.write_text("{{ .Values.no.such.value }}\n")
    with pytest.raises(helm.HelmError):
        render_chart(chart, None)
    broken.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n")
    with pytest.raises(yaml.YAMLError):
        render_chart(chart, None)
    broken.unlink()

    listener = chart / "templates" / "listener.yaml"
    listener.write_text(listener.read_text().replace("containerPort: {{ .Values.metricsPort }}",
                                                     "containerPort: {{ .Values.metricsPort }}\n              portz: 1"))
    doc = by_kind(render_chart(chart, None), "StatefulSet")["llnm-listener"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(doc, KUBE_VERSIONS[0])


@pytest.mark.parametrize("values,message", [
    ({"redis": {"enabled": False}}, "redis.external.url"),
    ({"tls": {"enabled": True}}, "tls.existingSecret"),
    ({"config": {"LLNM_BROKER_URL": "redis://x"}}, "set by the chart"),
    # the console container's own env (console.port, console.secureCookies, console.existingSecret)
    ({"config": {"LLNM_CONSOLE_PORT": "8081"}}, "config.LLNM_CONSOLE_PORT is set by the chart"),
    ({"config": {"LLNM_CONSOLE_BIND_ADDRESS": "127.0.0.1"}}, "config.LLNM_CONSOLE_BIND_ADDRESS is set by the chart"),
    ({"config": {"LLNM_CONSOLE_SECURE_COOKIES": "false"}}, "config.LLNM_CONSOLE_SECURE_COOKIES is set by the chart"),
    ({"config": {"LLNM_CONSOLE_USERS_FILE": "/tmp/u"}}, "config.LLNM_CONSOLE_USERS_FILE is set by the chart"),
    ({"config": {"LLNM_DESTINATIONS": "PACS@pacs:104"}}, "destinations.value or destinations.existingSecret"),
    # secrets never go into the ConfigMap (clear text): each is refused with where it goes instead
    ({"config": {"LLNM_CONSOLE_OIDC_CLIENT_SECRET": "s3cret"}}, "console.existingSecret, key oidc-client-secret"),
    ({"config": {"LLNM_CONSOLE_SECRET_KEY": "k" * 32}}, "console.existingSecret, key secret-key"),
    ({"config": {"LLNM_NOTIFY_SMTP_URL": "smtp+starttls://u:s3cret@mail:587"}}, "worker.extraEnv"),
    ({"triton": {"modelRepository": {"source": "pvc"}}}, "existingClaim"),
    ({"persistence": {"accessMode": "ReadWriteMany"}}, "ReadWriteMany is not supported"),
    ({"listener": {"requireAllowList": True}}, "set config.LLNM_ALLOWED_AES"),
    ({"triton": {"enabled": False, "autoscaling": {"enabled": True}}}, "needs triton.enabled"),
    ({"triton": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}}, "at least"),
    ({"dicomPort": 9111}, "falls among the metrics ports"),
    # values.schema.json: unknown LLNM_* settings (the service would ignore them), removed values
    ({"config": {"LLNM_ALLOWED_AE": "PACS"}}, "LLNM_ALLOWED_AE"),
    ({"worker": {"keda": {"enabled": True}}}, "keda"),
    ({"worker": {"processes": 0}}, "processes"),
    # values.schema.json: misspelt keys, wrong types and unknown choices
    ({"triton": {"enable": False}}, "enable"),
    ({"config": {"LOG_LEVEL": "x"}}, "LOG_LEVEL"),
    ({"worker": {"replicas": "two"}}, "replicas"),
    ({"listener": {"service": {"type": "Ingress"}}}, "type"),
    ({"redis": {"auth": {"password": "p@ss"}}}, "password"),
])
def test_impossible_values_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render_chart(CHART, values)


# -- what the chart must contain -------------------------------------------------------------------------
def test_default_install_has_every_component(rendered):
    docs = rendered["default"]
    assert "llnm-triton" in by_kind(docs, "Deployment")
    assert {"llnm-listener", "llnm-redis"} <= set(by_kind(docs, "StatefulSet"))
    # the listener and its workers: one pod (tests/deploy/test_helm_topology.py checks the rest)
    containers = [c["name"] for c in pod_specs(docs)["llnm-listener"]["containers"]]
    assert containers == ["listener", "worker-0", "worker-1", "console"]
    assert not {"llnm-worker"} & set(by_kind(docs, "Deployment"))
    pvc = by_kind(docs, "PersistentVolumeClaim")["llnm-spool"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"llnm-triton"}
    for kind in ("ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler", "NetworkPolicy"):
        assert not by_kind(docs, kind), f"{kind} is optional and off by default"


def test_the_console_runs_beside_the_listener_on_its_volume_and_only_behind_what_the_values_say(rendered):
    """The console reads the audit database and the spool: a container of the listener pod on the same
    volume, reached through its own Service (and an Ingress with TLS where configured), never the
    DICOM Service; the NetworkPolicy lets only consoleFrom reach it."""
    for name, docs in rendered.items():
        console = next((c for c in pod_specs(docs)["llnm-listener"]["containers"] if c["name"] == "console"), None)
        assert console is not None, name
        listener = _container(docs, "listener")
        assert {m["name"]: m["mountPath"] for m in console["volumeMounts"]}["spool"] == \
            {m["name"]: m["mountPath"] for m in listener["volumeMounts"]}["spool"]
        env = {e["name"]: e.get("value") for e in console["env"]}
        assert env["LLNM_CONSOLE_BIND_ADDRESS"] == "0.0.0.0" and env["LLNM_CONSOLE_SECURE_COOKIES"] == "true"
        # alive: /login on its port; never a readiness probe (see test_every_pod_is_locked_down_...)
        assert console["livenessProbe"]["httpGet"]["port"] == "console" and "readinessProbe" not in console
        svc = by_kind(docs, "Service")["llnm-console"]
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["console"] and svc["spec"]["type"] == "ClusterIP"
        assert "console" not in [p["targetPort"] for p in by_kind(docs, "Service")["llnm-listener"]["spec"]["ports"]]
    docs = rendered["all-values.yaml"]
    ingress = by_kind(docs, "Ingress")["llnm-console"]
    assert ingress["spec"]["tls"] == [{"hosts": ["llnm.example.org"], "secretName": "llnm-console-tls"}]
    console = _container(docs, "console")
    users = {m["name"]: m["mountPath"] for m in console["volumeMounts"]}["console-users"]
    env = {e["name"]: e for e in console["env"]}
    assert env["LLNM_CONSOLE_USERS_FILE"]["value"].startswith(users)
    assert env["LLNM_CONSOLE_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "llnm-console"
    # the single sign-on client secret: from the same Secret, never the ConfigMap
    assert env["LLNM_CONSOLE_OIDC_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "llnm-console", "key": "oidc-client-secret", "optional": True}
    rules = by_kind(docs, "NetworkPolicy")["llnm-listener"]["spec"]["ingress"]
    console_rules = [r for r in rules if any(p["port"] == "console" for p in r.get("ports", []))]
    assert [r["from"] for r in console_rules] == [[{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}}]]
    assert not by_kind(rendered["default"], "Ingress")


def test_listener_exposes_dicom_and_can_be_a_load_balancer(rendered):
    svc = by_kind(rendered["default"], "Service")["llnm-listener"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["dicom"]
    lb = by_kind(rendered["all-values.yaml"], "Service")["llnm-listener"]
    assert lb["spec"]["type"] == "LoadBalancer" and lb["spec"]["externalTrafficPolicy"] == "Local"
    assert lb["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/24"]
    node = by_kind(rendered["cpu-external-redis-values.yaml"], "Service")["llnm-listener"]
    assert node["spec"]["type"] == "NodePort" and node["spec"]["ports"][0]["nodePort"] == 31112
    listener = by_kind(rendered["default"], "StatefulSet")["llnm-listener"]
    assert listener["spec"]["replicas"] == 1 and listener["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_triton_runs_on_a_gpu_node_with_the_model_repository(rendered):
    docs = rendered["default"]
    spec = pod_specs(docs)["llnm-triton"]
    triton = spec["containers"][0]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert "--model-repository=/models" in triton["args"]
    init = spec["initContainers"][0]
    assert _is_llnm_image(init["image"]) and "/opt/llnm/model_repository/." in " ".join(init["command"])
    # the worker's LLNM_TRITON_URL names Triton's Service and a port it has
    worker_env = {e["name"]: e.get("value") for e in _container(docs, "worker-0")["env"]}
    url = re.match(r"(grpc|http)://([^:]+):(\d+)$", worker_env["LLNM_TRITON_URL"])
    assert url and worker_env["LLNM_INFERENCE_BACKEND"] == "triton"
    svc = by_kind(docs, "Service")[url.group(2)]
    assert int(url.group(3)) in [p["port"] for p in svc["spec"]["ports"]]
    pvc = pod_specs(rendered["existing-secrets-values.yaml"])["llnm-triton"]
    assert [c["name"] for c in pvc["initContainers"]] == ["verify-models"]  # checks, copies nothing
    assert pvc["volumes"][0]["persistentVolumeClaim"]["claimName"] == "llnm-models"


def test_model_mismatch_advice_for_a_pvc_repository_is_what_the_chart_can_do(rendered):
    """With triton.modelRepository.source=pvc only Triton mounts the claim: the workers keep their image's
    /opt/llnm/model_repository (the listener pod has no extra volumes). So the LLNMModelMismatch runbook and
    docs/operations.md cannot tell to give the workers the PVC's repository: the PVC gets the image's
    models, or the image (image.tag) gets the PVC's."""
    docs = rendered["existing-secrets-values.yaml"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod_specs(docs)["llnm-listener"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert "llnm-models" not in claims
    runbook = next(r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
                   for r in g["rules"] if r.get("alert") == "LLNMModelMismatch")["annotations"]["runbook"]
    section = " ".join((REPO / "docs" / "operations.md").read_text().split("`LLNMModelMismatch` (critical)")[1]
                       .split("\n- `")[0].split())
    for advice in (runbook, section):
        assert "LLNM_MODEL_REPOSITORY" not in advice, advice
        assert "/opt/llnm/model_repository" in advice and "image.tag" in advice, advice

@pytest.mark.parametrize("values_set", ["default", "existing-secrets-values.yaml"])
def test_triton_serves_as_nvidia_recommends(rendered, values_set):
    """Explicit model control loading exactly the worker's models, configs as written (their warm-ups run
    before ready), strict readiness behind a startup probe, metrics on 8002 for annotation-based scraping,
    and no start when a model file and the sha256 its config declares disagree (either repository source)."""
    from llnm.observability.metrics import TRITON_MODELS

    spec = pod_specs(rendered[values_set])["llnm-triton"]
    triton = spec["containers"][0]
    args = triton["args"]
    assert "--model-control-mode=explicit" in args and "--disable-auto-complete-config" in args
    assert sorted(a.split("=", 1)[1] for a in args if a.startswith("--load-model=")) == sorted(TRITON_MODELS)
    assert {"--strict-readiness=true", "--allow-metrics=true", "--metrics-port=8002"} <= set(args)
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["periodSeconds"] * triton["startupProbe"]["failureThreshold"] >= 300
    deployment = by_kind(rendered[values_set], "Deployment")["llnm-triton"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
    (init,) = spec["initContainers"]
    command = " ".join(init.get("command", []) + init.get("args", []))
    assert "model-hashes --check --model-repository /models" in command


def _container(docs: list[dict], name: str) -> dict:
    """A container of the listener pod (listener, worker-0, worker-1...)."""
    return next(c for c in pod_specs(docs)["llnm-listener"]["containers"] if c["name"] == name)


def test_cpu_site_runs_onnxruntime_in_the_workers(rendered):
    docs = rendered["cpu-external-redis-values.yaml"]
    assert "llnm-triton" not in by_kind(docs, "Deployment")
    workers = [c for c in pod_specs(docs)["llnm-listener"]["containers"] if c["name"].startswith("worker-")]
    assert len(workers) == 4
    for worker in workers:
        env = {e["name"]: e for e in worker["env"]}
        assert env["LLNM_INFERENCE_BACKEND"]["value"] == "onnxruntime" and "LLNM_TRITON_URL" not in env
        assert env["LLNM_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "llnm-broker"
    assert set(by_kind(docs, "StatefulSet")) == {"llnm-listener"}
    assert by_kind(docs, "PersistentVolumeClaim")["llnm-spool"]["spec"]["accessModes"] == ["ReadWriteOncePod"]


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_pod_is_locked_down_with_resources_and_probes(rendered, values_set):
    for name, spec in pod_specs(rendered[values_set]).items():
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("seccompProfile"), name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        for c in spec["containers"]:
            assert "livenessProbe" in c, c["name"]
            # Readiness is per pod: a console that is slow or crash-looping would take the listener pod
            # out of the DICOM Service. Only the console, a side container of that pod, goes without.
            is_console = name == "llnm-listener" and c["name"] == "console"
            assert ("readinessProbe" in c) != is_console, c["name"]
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in ports, f"{name}: {probe} on unknown port {port}"
            if _is_llnm_image(c["image"]):
                mounts = {m["mountPath"] for m in c["volumeMounts"]}
                assert {"/var/lib/llnm", "/tmp"} <= mounts, name


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_services_select_pods_and_target_named_ports(rendered, values_set):
    docs = rendered[values_set]
    templates = [d["spec"]["template"] for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]
    for name, svc in by_kind(docs, "Service").items():
        selected = [t for t in templates
                    if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert selected, f"Service {name} selects no pod"
        ports = {p["name"] for t in selected for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service {name} targets unknown port {p['targetPort']}"


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_llnm_variables_are_settings_fields(rendered, values_set, settings_env_names):
    docs = rendered[values_set]
    names = set()
    for cm in by_kind(docs, "ConfigMap").values():
        names |= {k for k in cm.get("data", {}) if k.startswith("LLNM_")}
    for spec in pod_specs(docs).values():
        for c in spec["containers"]:
            names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("LLNM_")}
    assert names and names <= settings_env_names, names - settings_env_names


def test_network_policy_lets_only_the_pacs_reach_the_dicom_port(rendered):
    docs = rendered["all-values.yaml"]
    policies = by_kind(docs, "NetworkPolicy")
    for policy in policies.values():
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule without 'from' admits everyone"
    listener = policies["llnm-listener"]["spec"]["ingress"]
    dicom = [r for r in listener if any(p["port"] == "dicom" for p in r["ports"])]
    helm_test = [{"podSelector": {"matchLabels": {"llnm.io/helm-test": "llnm"}}}]  # the `helm test` pod only
    assert [r["from"] for r in dicom] == [[{"ipBlock": {"cidr": "10.20.0.15/32"}}], helm_test]
    assert set(policies) == {"llnm-listener", "llnm-triton", "llnm-redis"}
    # Triton and Redis admit the listener pod, where the workers run
    for name in ("llnm-triton", "llnm-redis"):
        peers = [p for rule in policies[name]["spec"]["ingress"] for p in rule["from"]]
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "listener",
                                                "app.kubernetes.io/instance": "llnm",
                                                "app.kubernetes.io/name": "llnm"}}} in peers, name
    # every metrics port of the listener pod is open to metricsFrom
    ports = {p["name"] for c in pod_specs(docs)["llnm-listener"]["containers"] for p in c["ports"]}
    scraped = {p["port"] for r in listener if r["from"][0].get("namespaceSelector") for p in r["ports"]}
    assert scraped == ports - {"dicom"}


def test_secrets_stay_in_secrets(rendered):
    docs = rendered["cpu-external-redis-values.yaml"] + rendered["all-values.yaml"]
    for doc in docs:
        if doc["kind"] != "Secret":
            text = json.dumps(doc)
            assert "s3cret" not in text and "BEGIN PRIVATE KEY" not in text, doc["metadata"]["name"]
            assert "pacs.example.org" not in text, doc["metadata"]["name"]  # LLNM_DESTINATIONS
    # LLNM_DESTINATIONS (a STOW URL may hold credentials) reaches the workers and the console from a Secret,
    # never the listener
    docs = rendered["all-values.yaml"]
    for c in pod_specs(docs)["llnm-listener"]["containers"]:
        env = {e["name"]: e for e in c["env"]}
        if c["name"] == "listener":
            assert "LLNM_DESTINATIONS" not in env
            continue
        ref = env["LLNM_DESTINATIONS"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in by_kind(docs, "Secret")[ref["name"]]["data"]
    existing = _container(rendered["existing-secrets-values.yaml"], "worker-0")
    ref = {e["name"]: e for e in existing["env"]}["LLNM_DESTINATIONS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "llnm-destinations", "key": "LLNM_DESTINATIONS"}
    assert "LLNM_DESTINATIONS" not in {e["name"] for e in _container(rendered["default"], "worker-0")["env"]}
    tls = by_kind(rendered["all-values.yaml"], "Secret")["llnm-tls"]
    assert tls["type"] == "kubernetes.io/tls" and {"tls.crt", "tls.key", "ca.crt"} <= set(tls["data"])
    listener = _container(rendered["all-values.yaml"], "listener")
    env = {e["name"]: e.get("value") for e in listener["env"]}
    assert env["LLNM_TLS_CA"] == "/etc/llnm/tls/ca.crt"


def test_workers_verify_the_pacs_against_the_ca_without_mutual_tls(rendered):
    """LLNM_TLS_CA means two things: on the listener, require client certificates signed by it (mutual TLS
    only); in a worker's sender, the CA that the PACS's certificate is verified against. A CA in the chart's
    TLS Secret reaches the workers whether or not client certificates are required."""
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    docs = render_chart(CHART, {"tls": {"enabled": True, "cert": pem, "key": "-----BEGIN PRIVATE KEY-----\nMIIE\n"
                                        "-----END PRIVATE KEY-----\n", "ca": pem}})
    assert "ca.crt" in by_kind(docs, "Secret")["llnm-tls"]["data"]

    def tls_env(docs: list[dict], container: str) -> dict:
        env = [e for e in _container(docs, container)["env"] if e["name"].startswith("LLNM_TLS_")]
        assert len(env) == len({e["name"] for e in env}), env  # each variable once
        return {e["name"]: e.get("value") for e in env}

    for worker in ("worker-0", "worker-1"):
        assert tls_env(docs, worker)["LLNM_TLS_CA"] == "/etc/llnm/tls/ca.crt"
    assert "LLNM_TLS_CA" not in tls_env(docs, "listener")  # no mutual TLS: any client may connect
    # mutual TLS: the listener and every worker
    docs = rendered["all-values.yaml"]
    for name in ("listener", "worker-0", "worker-1", "worker-2"):
        assert tls_env(docs, name)["LLNM_TLS_CA"] == "/etc/llnm/tls/ca.crt", name
    # a Secret of the site's without requireClientCert need not hold ca.crt: the workers use the system CAs
    docs = rendered["existing-secrets-values.yaml"]
    assert "LLNM_TLS_CA" not in tls_env(docs, "worker-0") and "LLNM_TLS_CERT" in tls_env(docs, "worker-0")

def test_monitoring_objects_match_the_compose_files(rendered):
    docs = rendered["all-values.yaml"]
    monitors = by_kind(docs, "ServiceMonitor")
    services = by_kind(docs, "Service")
    jobs = set()
    for name, sm in monitors.items():
        selected = [s for s in services.values()
                    if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert selected, f"ServiceMonitor {name} selects no Service"
        for endpoint in sm["spec"]["endpoints"]:
            assert all(endpoint["port"] in [p["name"] for p in s["spec"]["ports"]] for s in selected)
            jobs |= {r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"}
    compose_jobs = {j["job_name"] for j in
                    yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs == compose_jobs
    rule = by_kind(docs, "PrometheusRule")["llnm"]
    assert rule["spec"]["groups"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    dashboard = by_kind(docs, "ConfigMap")["llnm-dashboard"]
    assert json.loads(dashboard["data"]["llnm.json"]) == json.loads(
        (DEPLOY / "grafana" / "dashboards" / "llnm.json").read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_chart_files_are_the_deploy_files():
    """One copy of the alert rules and the dashboard: the chart links to deploy/."""
    for name, target in [("alerts.yml", DEPLOY / "prometheus" / "alerts.yml"),
                         ("llnm.json", DEPLOY / "grafana" / "dashboards" / "llnm.json")]:
        link = CHART / "files" / name
        assert link.is_symlink() and link.resolve() == target.resolve(), name


# -- documentation of the values -------------------------------------------------------------------------
#: Blocks that hold plain Kubernetes fields: documented by Kubernetes, not value by value.
_KUBERNETES_BLOCKS = {"resources", "podSecurityContext", "securityContext", "nodeSelector", "tolerations",
                      "affinity", "labels", "annotations"}


def test_every_value_is_documented():
    """Each key of values.yaml (three levels deep) has a comment right above it or on its line,
    except inside blocks of plain Kubernetes fields."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z_][\w.\-/]*):(.*)$", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        path = [(ind, k) for ind, k in path if ind < indent]
        inside_kubernetes_block = any(k in _KUBERNETES_BLOCKS for _, k in path)
        path.append((indent, key))
        if indent > 4 or inside_kubernetes_block:
            continue
        if "#" not in m.group(3) and not (i > 0 and lines[i - 1].lstrip().startswith("#")):
            undocumented.append(".".join(k for _, k in path))
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"


def test_the_words_match_what_the_chart_renders(rendered):
    """The docs describe the rendered pod: who gets LLNM_DESTINATIONS, what /tmp is."""
    docs = rendered["all-values.yaml"]
    with_destinations = sorted(c["name"] for c in pod_specs(docs)["llnm-listener"]["containers"]
                               if "LLNM_DESTINATIONS" in {e["name"] for e in c["env"]})
    assert "console" in with_destinations  # re-send to a destination
    operations = " ".join((REPO / "docs" / "operations.md").read_text().split())
    for claim in re.findall(r"only the worker[^.]*", operations):
        assert "console" in claim, f"the console gets LLNM_DESTINATIONS too: {claim!r}"
    tmp = next(v for v in pod_specs(docs)["llnm-listener"]["volumes"] if v["name"] == "tmp")
    if tmp["emptyDir"].get("medium") != "Memory":  # on the node's disk
        for path in (CHART / "values.yaml", CHART / "README.md"):
            assert "in-memory" not in path.read_text(), path.name

def test_readme_documents_install_and_every_top_level_value():
    readme = (CHART / "README.md").read_text()
    assert "helm install" in readme and "helm upgrade" in readme
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in values if f"`{k}" not in readme]
    assert not missing, f"README.md does not explain: {missing}"


def test_install_notes_tell_the_pacs_address_and_warn_on_a_closed_dicom_port():
    def notes(values: dict | None) -> str:
        with helm.Chart.load(str(CHART)) as chart:
            return chart.render(values, name="llnm", namespace="pacs")["llnm/templates/NOTES.txt"]

    lb = notes(values_for("all-values.yaml"))
    assert "AE title LLNM" in lb and "loadBalancer.ingress" in lb and "Research use only" in lb
    assert "WARNING" not in lb
    closed = notes({"networkPolicy": {"enabled": True}})
    assert "WARNING" in closed and "dicomFrom" in closed
