"""deploy/prometheus/: the Prometheus config and alert rules pass promtool, every alert fires in
tests/deploy/alerts_test.yml, carries a runbook line and is explained in docs/operations.md."""

from __future__ import annotations

import os
import subprocess

import promql_parser
import pytest
import yaml
from deploy_support import DEPLOY, REPO, tool

RULES_FILE = DEPLOY / "prometheus" / "alerts.yml"
UNIT_TESTS = REPO / "tests" / "deploy" / "alerts_test.yml"


def _alerts() -> list[dict]:
    return [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]


def _promtool() -> str:
    """promtool, or a skip on a developer machine without it; in CI (CI=true) a missing promtool fails."""
    promtool = tool("promtool")
    if promtool is None:
        message = "promtool (Debian package prometheus; scripts/test-services.sh installs it) is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return promtool


def test_promtool_accepts_config_and_rules():
    promtool = _promtool()
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(RULES_FILE)]):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_the_promtool_unit_tests():
    result = subprocess.run([_promtool(), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    fired = {case["alertname"] for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {a["alert"] for a in _alerts()} <= fired


def test_every_alert_has_severity_summary_and_runbook():
    alerts = _alerts()
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for a in alerts:
        promql_parser.parse(a["expr"])
        assert a["labels"]["severity"] in {"warning", "critical"}, a["alert"]
        assert {"summary", "description", "runbook"} <= set(a["annotations"]), a["alert"]
        assert a["alert"].startswith("LLNM") and "for" in a, a["alert"]


def test_the_problems_an_operator_must_hear_about_have_alerts():
    exprs = {a["alert"]: a["expr"] for a in _alerts()}
    wanted = {
        "queue backing up": "llnm_queue_depth",
        "studies stuck waiting": "llnm_studies_waiting",
        "failures": "llnm_studies_failed_total",
        "dead letters": "llnm_studies_dead_lettered_total",
        "PACS send failures": 'llnm_objects_sent_total{outcome="failed"}',
        "Triton errors": "llnm_triton_errors_total",
        "Triton latency": "llnm_triton_request_seconds_bucket",
        "spool disk nearly full": "llnm_spool_free_bytes",
    }
    for problem, metric in wanted.items():
        assert any(metric in e for e in exprs.values()), f"no alert on {problem}"


def test_operations_guide_explains_every_alert():
    guide = (REPO / "docs" / "operations.md").read_text()
    missing = [a["alert"] for a in _alerts() if f"`{a['alert']}`" not in guide]
    assert not missing, f"docs/operations.md does not explain {missing}"
