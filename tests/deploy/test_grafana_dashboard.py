"""deploy/grafana/: the dashboard is well-formed Grafana JSON whose queries parse, uses the
provisioned Prometheus through a variable, and shows flow, stage latency, errors, queue and disk."""

from __future__ import annotations

import json
import re

import promql_parser
import yaml
from deploy_support import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "llnm.json"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict) -> list[dict]:
    return [p for p in d["panels"] if p["type"] != "row"]


def test_dashboard_structure():
    d = _dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
    for p in _panels(d):
        assert p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]


def test_every_query_parses_and_uses_the_datasource_variable():
    d = _dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in _panels(d):
        for item in [p, *p["targets"]]:
            assert item["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            promql_parser.parse(t["expr"].replace("$__rate_interval", "5m"))


def test_dashboard_shows_flow_latency_errors_queue_and_disk():
    d = _dashboard()
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["Flow of studies", "Latency", "Errors", "Queue and disk"]
    exprs = " ".join(t["expr"] for p in _panels(d) for t in p["targets"])
    for metric in ("llnm_instances_received_total", "llnm_studies_completed_total", "llnm_studies_processed_total",
                   "llnm_stage_seconds_bucket", "llnm_studies_failed_total", "llnm_studies_dead_lettered_total",
                   "llnm_objects_sent_total", "llnm_queue_depth", "llnm_studies_waiting", "llnm_spool_free_bytes"):
        assert metric in exprs, metric



def test_spool_free_space_is_read_from_the_listener_and_workers_only():
    """The console exports llnm_spool_free_bytes too but never refreshes it (always 0): a min() over every
    job would show an empty spool. Job names as in deploy/prometheus/prometheus.yml and the chart's
    ServiceMonitors."""
    exprs = [t["expr"] for p in _panels(_dashboard()) for t in p["targets"] if "llnm_spool_free_bytes" in t["expr"]]
    assert exprs
    for expr in exprs:
        selectors = re.findall(r"llnm_spool_free_bytes(\{[^}]*\})?", expr)
        assert selectors and all(s == '{job=~"llnm-(listener|worker)"}' for s in selectors), expr

def test_grafana_provisioning_files():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "llnm.yml").read_text())
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"
