"""How the model does at this hospital: the radiologists' agreement, and where pathology outcomes exist,
AUC, sensitivity and specificity, overall, per month and per scanner model (drift shows as a trend).

Computed from the audit database (llnm.audit: feedback, outcomes, results) at each scrape and page view;
exported to Prometheus by `QualityCollector` (registered on llnm.observability.metrics.REGISTRY by the
console). Scanner models are free text from the source headers: the metric labels keep the
MAX_SCANNER_LABELS most frequent, cleaned, and count the rest as "other" (bounded cardinality).
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from typing import Any, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llnm.audit import AuditTrail

#: P(LLNM) at or above this counts as a positive call for sensitivity and specificity.
DECISION_THRESHOLD = 0.5
MAX_SCANNER_LABELS = 20
_LABEL = re.compile(r"[^A-Za-z0-9 ._-]")


def auc(scores: list[float], labels: list[int]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    order = sorted(pos + neg)
    ranks: dict[float, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and order[j + 1] == order[i]:
            j += 1
        ranks[order[i]] = (i + j) / 2 + 1
        i = j + 1
    u = sum(ranks[s] for s in pos) - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """AUC, sensitivity and specificity of outcome rows that have a probability."""
    rated = [r for r in rows if r.get("probability") is not None]
    p = [float(r["probability"]) for r in rated]
    y = [int(r["llnm"]) for r in rated]
    pos = sum(y)
    neg = len(y) - pos
    tp = sum(1 for pi, yi in zip(p, y) if yi and pi >= DECISION_THRESHOLD)
    tn = sum(1 for pi, yi in zip(p, y) if not yi and pi < DECISION_THRESHOLD)
    return {"studies": len(rated), "positives": pos, "auc": auc(p, y),
            "sensitivity": tp / pos if pos else None, "specificity": tn / neg if neg else None}


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    agree = sum(1 for r in rows if r["agree"])
    return {"studies": len(rows), "agree": agree, "rate": agree / len(rows) if rows else None}


def _month(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def scanner_label(model: str | None, keep: set[str]) -> str:
    name = _LABEL.sub("", (model or "").strip())[:40] or "unknown"
    return name if name in keep else "other"


def _kept_scanners(rows: Iterable[dict[str, Any]]) -> set[str]:
    counts = Counter(_LABEL.sub("", (r.get("scanner_model") or "").strip())[:40] or "unknown" for r in rows)
    return {name for name, _ in counts.most_common(MAX_SCANNER_LABELS)}


def report(audit: AuditTrail) -> dict[str, Any]:
    """Everything the quality page and the metrics show."""
    outcomes = audit.outcomes()
    agreements = audit.agreements()
    keep = _kept_scanners(outcomes + agreements)
    by_month_o: dict[str, list] = defaultdict(list)
    by_month_a: dict[str, list] = defaultdict(list)
    by_scanner_o: dict[str, list] = defaultdict(list)
    by_scanner_a: dict[str, list] = defaultdict(list)
    for r in outcomes:
        by_month_o[_month(r["ts"])].append(r)
        by_scanner_o[scanner_label(r.get("scanner_model"), keep)].append(r)
    for r in agreements:
        by_month_a[_month(r["ts"])].append(r)
        by_scanner_a[scanner_label(r.get("scanner_model"), keep)].append(r)
    months = sorted(set(by_month_o) | set(by_month_a))
    scanners = sorted(set(by_scanner_o) | set(by_scanner_a))
    return {
        "threshold": DECISION_THRESHOLD,
        "overall": {"outcomes": scores(outcomes), "agreement": agreement(agreements)},
        "by_month": [{"month": m, "outcomes": scores(by_month_o[m]), "agreement": agreement(by_month_a[m])}
                     for m in months],
        "by_scanner": [{"scanner_model": s, "outcomes": scores(by_scanner_o[s]),
                        "agreement": agreement(by_scanner_a[s])} for s in scanners],
    }


def plot_points(series: list[float | None], width: int = 600, height: int = 160,
                pad: int = 20) -> list[tuple[float, float]]:
    """SVG (x, y) of values in [0, 1] over equally spaced x; a None (no data that month) is left out."""
    n = len(series)
    out = []
    for i, v in enumerate(series):
        if v is None:
            continue
        x = pad + (i * (width - 2 * pad) / (n - 1) if n > 1 else (width - 2 * pad) / 2)
        y = height - pad - v * (height - 2 * pad)
        out.append((round(x, 1), round(y, 1)))
    return out


class QualityCollector(Collector):
    """llnm_feedback_* and llnm_outcome_* gauges, computed from the audit database at each scrape."""

    def __init__(self, audit: AuditTrail) -> None:
        self.audit = audit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rep = report(self.audit)
        agree = GaugeMetricFamily("llnm_feedback_agreement_ratio",
                                  "Share of studies whose radiologist agreed with the risk (latest answer)",
                                  labels=["scanner_model"])
        rated = GaugeMetricFamily("llnm_feedback_studies", "Studies with an agree/disagree answer",
                                  labels=["scanner_model"])
        aucs = GaugeMetricFamily("llnm_outcome_auc", "AUC of P(LLNM) against pathology outcomes",
                                 labels=["scanner_model"])
        sens = GaugeMetricFamily("llnm_outcome_sensitivity",
                                 f"Sensitivity at P(LLNM) >= {DECISION_THRESHOLD}", labels=["scanner_model"])
        spec = GaugeMetricFamily("llnm_outcome_specificity",
                                 f"Specificity at P(LLNM) >= {DECISION_THRESHOLD}", labels=["scanner_model"])
        count = GaugeMetricFamily("llnm_outcome_studies", "Studies with a pathology outcome and a probability",
                                  labels=["scanner_model"])
        groups = [("all", rep["overall"])] + [(g["scanner_model"], g) for g in rep["by_scanner"]]
        for label, g in groups:
            a, o = g["agreement"], g["outcomes"]
            rated.add_metric([label], a["studies"])
            count.add_metric([label], o["studies"])
            for family, value in ((agree, a["rate"]), (aucs, o["auc"]), (sens, o["sensitivity"]),
                                  (spec, o["specificity"])):
                if value is not None:
                    family.add_metric([label], value)
        yield from (agree, rated, aucs, sens, spec, count)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
