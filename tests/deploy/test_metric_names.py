"""Every llnm_* metric (and label) the alert rules, their unit tests and the dashboard use exists
in llnm.observability.metrics: a renamed metric breaks this test, not a silent alert."""

from __future__ import annotations

import json

import promql_parser
import pytest
import yaml
from deploy_support import DEPLOY, REPO

#: Labels Prometheus adds to every scraped series (`namespace`: the Prometheus Operator's target label,
#: which the rules group by so that one release's series never answer for another's).
TARGET_LABELS = {"job", "instance", "namespace"}


def _exported() -> dict[str, set[str]]:
    """Series names the module exports -> their label names (histograms add `le`)."""
    from prometheus_client import Counter, Gauge, Histogram

    from llnm.observability import metrics

    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, (Counter, Gauge, Histogram)):
            continue
        labels = set(value._labelnames)
        if isinstance(value, Counter):
            names[value._name + "_total"] = labels
        elif isinstance(value, Gauge):
            names[value._name] = labels
        else:
            for suffix in ("_bucket", "_count", "_sum"):
                names[value._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the rules and the dashboard."""
    out = []
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]:
        out += [(f"alert {r['alert']}", r["expr"]) for r in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "llnm.json").read_text())
    for panel in dashboard["panels"]:
        out += [(f"panel {panel['title']}", t["expr"].replace("$__rate_interval", "5m"))
                for t in panel.get("targets", [])]
    tests = yaml.safe_load((REPO / "tests" / "deploy" / "alerts_test.yml").read_text())["tests"]
    out += [("alerts_test.yml", s["series"]) for t in tests for s in t["input_series"]]
    return out


def _selectors_and_groupings(expr: str) -> tuple[list, list]:
    selectors, groupings = [], []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.append(node)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return selectors, groupings


def test_alert_rules_and_dashboard_use_only_metrics_the_service_exports():
    exported = _exported()
    assert exported, "llnm.observability.metrics defines no metric"
    problems = []
    for where, expr in _queries():
        selectors, groupings = _selectors_and_groupings(expr)
        used: set[str] = set()
        for sel in selectors:
            if not (sel.name or "").startswith("llnm_"):
                continue
            if sel.name not in exported:
                problems.append(f"{where}: {sel.name} is not in llnm.observability.metrics")
                continue
            used |= exported[sel.name]
            unknown = {m.name for m in sel.matchers.matchers} - exported[sel.name] - TARGET_LABELS - {"__name__"}
            if unknown:
                problems.append(f"{where}: {sel.name} has no label {sorted(unknown)}")
        for agg in groupings:
            unknown = set(agg.modifier.labels) - used - TARGET_LABELS
            if used and unknown:
                problems.append(f"{where}: groups by unknown label {sorted(unknown)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("broken", ["llnm_queue_depthz", 'llnm_objects_sent_total{outcomez="failed"}'])
def test_the_check_catches_a_wrong_name(broken):
    exported = _exported()
    selectors, _ = _selectors_and_groupings(broken)
    sel = selectors[0]
    labels = {m.name for m in sel.matchers.matchers} - {"__name__"}
    assert sel.name not in exported or not labels <= exported[sel.name] | TARGET_LABELS
