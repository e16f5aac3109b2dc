"""Named phantom profiles: what a generated set is meant to test, as a frozen config chosen by name.

`standard` is the generator as it always was (byte-identical output for a seed; existing models and
tests depend on it). `fusion` is a benchmark that needs image AND report to reach its Bayes-optimal AUC:

- pixel-only factors: a continuous spiculation amplitude of the drawn outline, the density of punctate
  echogenic foci and the internal heterogeneity of the nodule texture enter the true risk and are drawn,
  but the report states them rarely or coarsely;
- noisy reports: descriptors missed, margins called smooth on irregular nodules, the calcification and
  vascularity sentences or the impression left out; TI-RADS from the REPORTED descriptors; the central
  node and Doppler vascularity stay report-only factors;
- the true risk reads the latent anatomy (target capsule distance, true size, drawn lobe third, latent
  pixel factors), never values measured on the generated masks;
- risk levels are the paper's stages from a drawn number and largest size of metastatic nodes
  (risk.node_stage), recorded in params.jsonl.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ReportNoise:
    """How the report writer errs. The defaults are the standard profile's rates (report.py's wording)."""

    size_sd_mm: float = 0.6  # measurement noise of each reported dimension
    echo_off: float = 0.15  # echogenicity graded one step off
    margin_sensitivity: float = 0.8  # non-smooth margin reported as such (else "smooth": a contradiction)
    margin_overcall: float = 0.06  # smooth margin reported ill-defined
    micro_sensitivity: float = 0.75
    micro_false: float = 0.05
    ete_sensitivity: float = 0.7
    third_correct: float = 0.9
    omit_calcification: float = 0.0  # no calcification/foci sentence at all
    omit_vascularity: float = 0.0  # no Doppler sentence at all
    omit_impression: float = 0.0  # findings only, no impression
    foci_words: bool = False  # "innumerable"/"a few" punctate foci: the only, coarse, word on foci density


@dataclass(frozen=True)
class PhantomProfile:
    """One preset of the generator. `latent_risk`: the true risk reads latent findings (risk.fusion_*)
    instead of the realised ones; `pixel_factors`: draw and render the pixel-only factors;
    `risk_stages`: "p_split" (level 1 = no LLNM, positives split 2/3 by the true probability) or
    "nodes" (the paper's stages from drawn metastatic nodes, risk.draw_outcome_nodes)."""

    name: str
    latent_risk: bool = False
    pixel_factors: bool = False
    report: ReportNoise = field(default_factory=ReportNoise)
    risk_stages: str = "p_split"

    def __post_init__(self) -> None:
        if self.risk_stages not in ("p_split", "nodes"):
            raise ValueError(f"risk_stages must be 'p_split' or 'nodes', not {self.risk_stages!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STANDARD = PhantomProfile(name="standard")
FUSION = PhantomProfile(
    name="fusion", latent_risk=True, pixel_factors=True,
    report=ReportNoise(size_sd_mm=1.0, echo_off=0.25, margin_sensitivity=0.6, margin_overcall=0.08,
                       micro_sensitivity=0.6, micro_false=0.08, ete_sensitivity=0.6, third_correct=0.85,
                       omit_calcification=0.3, omit_vascularity=0.2, omit_impression=0.15, foci_words=True),
    risk_stages="nodes")
PROFILES: dict[str, PhantomProfile] = {p.name: p for p in (STANDARD, FUSION)}


def get_profile(profile: str | PhantomProfile | None) -> PhantomProfile:
    """A profile by name (None = standard), or the profile itself."""
    if profile is None:
        return STANDARD
    if isinstance(profile, PhantomProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown phantom profile {profile!r}; known: {', '.join(PROFILES)}") from None
