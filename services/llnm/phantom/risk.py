"""The phantom's true LLNM risk model: a logistic model over the realised findings.

The directions follow the LLNM-Net paper (Shen et al., Nat Commun 2025) and the PTC literature:
a nodule within 2.5 mm of the capsule, in the upper or middle third of the lobe, larger, with
irregular margins, hypoechoic, with microcalcifications, in a younger or male patient, and with
worrying report wording (extrathyroidal extension, a suspicious central node) carries more risk.
Labels are drawn from `p_true`, so AUC(p_true, llnm) is the Bayes-optimal AUC of a set.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llnm.model.stages import node_stage

from .findings import NEAR_CAPSULE_MM, Findings

INTERCEPT = -3.45
WEIGHTS: dict[str, float] = {
    "near_capsule": 1.6,  # capsule distance < 2.5 mm
    "touching_capsule": 0.5,  # < 0.5 mm, on top of near_capsule
    "extrathyroidal_extension": 0.8,
    "upper_third": 1.0,
    "middle_third": 0.5,
    "log2_size_per_10mm": 0.9,
    "margin_ill-defined": 0.4,
    "margin_lobulated": 0.6,
    "margin_irregular": 1.0,
    "echo_hyper": -0.4,
    "echo_hypo": 0.7,
    "echo_marked-hypo": 1.0,
    "calc_micro": 1.0,
    "calc_macro": 0.3,
    "calc_rim": 0.2,
    "composition_mostly-solid": -0.3,
    "composition_mixed": -0.9,
    "male": 0.7,
    "age_per_10y_over_45": -0.35,
    "central_node": 0.8,
    "internal_vascularity": 0.4,
}


@dataclass(frozen=True)
class RiskFactors:
    """What the risk model reads: the REALISED values (measured on the generated images)."""

    capsule_mm: float
    vertical: str
    size_mm: float
    margin: str
    echogenicity: str
    calcification: str
    composition: str
    sex: str
    age: float
    ete: bool
    central_node: bool
    vascularity: str


def design(f: RiskFactors) -> dict[str, float]:
    """The model's covariates, named as in WEIGHTS."""
    x = {
        "near_capsule": float(f.capsule_mm < NEAR_CAPSULE_MM),
        "touching_capsule": float(f.capsule_mm < 0.5),
        "extrathyroidal_extension": float(f.ete),
        "upper_third": float(f.vertical == "upper"),
        "middle_third": float(f.vertical == "middle"),
        "log2_size_per_10mm": math.log2(max(f.size_mm, 1.0) / 10.0),
        "male": float(f.sex == "M"),
        "age_per_10y_over_45": (f.age - 45.0) / 10.0,
        "central_node": float(f.central_node),
        "internal_vascularity": float(f.vascularity == "internal"),
    }
    return _with_categories(x, WEIGHTS, f)


def _with_categories(x: dict[str, float], weights: dict[str, float], f: RiskFactors | Findings) -> dict[str, float]:
    """`x` plus the one-hot margin, echogenicity, calcification and composition covariates `weights` names."""
    for key in weights:
        for prefix, value in (("margin_", f.margin), ("echo_", f.echogenicity), ("calc_", f.calcification),
                              ("composition_", f.composition)):
            if key.startswith(prefix):
                x[key] = float(key == prefix + value)
    return x


def _linear(intercept: float, weights: dict[str, float], x: dict[str, float]) -> float:
    return intercept + sum(weights[k] * x[k] for k in weights)


def logit(f: RiskFactors) -> float:
    return _linear(INTERCEPT, WEIGHTS, design(f))


def p_true(f: RiskFactors) -> float:
    return 1.0 / (1.0 + math.exp(-logit(f)))


#: The fusion profile's true model (profiles.FUSION): over the LATENT findings, with three pixel-only
#: factors and two report-only ones weighted so that neither source alone reaches the Bayes AUC.
FUSION_INTERCEPT = -6.3
FUSION_WEIGHTS: dict[str, float] = {
    "near_capsule": 1.3,  # target capsule distance < 2.5 mm
    "touching_capsule": 0.4,
    "extrathyroidal_extension": 0.8,
    "upper_third": 0.9,
    "middle_third": 0.45,
    "log2_size_per_10mm": 0.7,
    "margin_ill-defined": 0.3,
    "margin_lobulated": 0.3,
    "margin_irregular": 0.4,
    "spiculation": 2.2,  # pixel-only: continuous outline irregularity
    "echo_hyper": -0.4,
    "echo_hypo": 0.3,
    "echo_marked-hypo": 0.5,
    "calc_macro": 0.3,
    "calc_rim": 0.2,
    "log2_1p_foci_per_cm2": 0.45,  # pixel-only beyond presence: density of punctate foci
    "heterogeneity": 2.2,  # pixel-only: coarse internal texture
    "composition_mostly-solid": -0.3,
    "composition_mixed": -0.9,
    "male": 0.7,
    "age_per_10y_over_45": -0.35,
    "central_node": 2.8,  # report-only
    "internal_vascularity": 2.0,  # report-only
}


def fusion_design(f: Findings) -> dict[str, float]:
    """The fusion model's covariates from the latent findings (pixel factors drawn), named as in
    FUSION_WEIGHTS. Nothing here is measured on a mask: the anatomy is what was intended."""
    if f.spiculation is None or f.foci_per_cm2 is None or f.heterogeneity is None:
        raise ValueError("the fusion risk needs the pixel factors (findings.draw_fusion_findings)")
    x = {
        "near_capsule": float(f.ete or f.capsule_target_mm < NEAR_CAPSULE_MM),
        "touching_capsule": float(f.ete or f.capsule_target_mm < 0.5),
        "extrathyroidal_extension": float(f.ete),
        "upper_third": float(f.vertical == "upper"),
        "middle_third": float(f.vertical == "middle"),
        "log2_size_per_10mm": math.log2(max(f.size_mm, 1.0) / 10.0),
        "spiculation": f.spiculation,
        "log2_1p_foci_per_cm2": math.log2(1.0 + f.foci_per_cm2),
        "heterogeneity": f.heterogeneity,
        "male": float(f.sex == "M"),
        "age_per_10y_over_45": (f.age - 45.0) / 10.0,
        "central_node": float(f.central_node),
        "internal_vascularity": float(f.vascularity == "internal"),
    }
    return _with_categories(x, FUSION_WEIGHTS, f)


def fusion_logit(f: Findings) -> float:
    return _linear(FUSION_INTERCEPT, FUSION_WEIGHTS, fusion_design(f))


def fusion_p_true(f: Findings) -> float:
    return 1.0 / (1.0 + math.exp(-fusion_logit(f)))


def draw_outcome(p: float, rng: np.random.Generator) -> tuple[int, int]:
    """(llnm, risk_level) of the standard profile. Level 1 = no LLNM; among positives level 3 is
    likelier the higher the true probability (a split of positives by p, not the paper's stages:
    profiles with risk_stages="nodes" use draw_outcome_nodes)."""
    llnm = int(rng.random() < p)
    if not llnm:
        return 0, 1
    return 1, 3 if rng.random() < p**1.5 else 2


def draw_nodes(p: float, rng: np.random.Generator) -> tuple[int, float]:
    """(metastatic node count >= 1, largest node in mm) of an LLNM-positive patient. A latent burden,
    half the true logit plus unit noise, raises both; calibrated so that among positives the counts
    1-5 / 6-10 / > 10 come out near the paper's 85 / 10 / 5 % (its Table 1) and about 5 % have a
    node over 3 cm."""
    q = min(max(p, 1e-6), 1.0 - 1e-6)
    burden = 0.5 * math.log(q / (1.0 - q)) + float(rng.normal())
    count = 1 + int(rng.poisson(0.9 * math.exp(0.7 * burden)))
    largest = 10.0 * math.exp(0.25 * burden + 0.45 * float(rng.normal()))
    return count, round(largest, 1)


def draw_outcome_nodes(p: float, rng: np.random.Generator) -> tuple[int, int, int, float | None]:
    """(llnm, stage, metastatic nodes, largest node mm or None): the label drawn exactly as in
    draw_outcome (same first draw), then for positives the nodes and the paper's stage."""
    llnm = int(rng.random() < p)
    if not llnm:
        return 0, 1, 0, None
    count, largest = draw_nodes(p, rng)
    return 1, node_stage(count, largest), count, largest


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with tie correction; NaN when one class is absent."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def read_labels(labels_csv_path: str | Path) -> list[dict[str, str]]:
    with open(labels_csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def bayes_auc(labels_csv_path: str | Path) -> float:
    """AUC of the generator's true probability against the drawn labels: the best any model can
    expect on this set (up to sampling noise)."""
    rows = read_labels(labels_csv_path)
    return auc(np.array([float(r["p_true"]) for r in rows]), np.array([int(r["llnm"]) for r in rows]))
