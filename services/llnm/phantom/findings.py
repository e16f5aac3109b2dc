"""The latent patient and nodule findings of one synthetic study, drawn before any pixel exists.

A hidden aggressiveness score z ties the suspicious features together the way they co-occur in
papillary carcinoma (hypoechoic, irregular, microcalcified, near the capsule), so the factors are
correlated but each still carries its own weight in the true risk model (`risk.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

MARGINS = ("smooth", "ill-defined", "lobulated", "irregular")
ECHOES = ("hyper", "iso", "hypo", "marked-hypo")
CALCIFICATIONS = ("none", "micro", "macro", "rim")
COMPOSITIONS = ("solid", "mostly-solid", "mixed")
VERTICAL = ("upper", "middle", "lower")
HORIZONTAL = ("medial", "lateral")

NEAR_CAPSULE_MM = 2.5  # the paper's 0.25 cm threshold


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


@dataclass
class Findings:
    """Latent truth. Positions and capsule distance are targets; `study.py` records what was realised."""

    aggressiveness: float
    side: str  # "right" or "left" lobe
    age: int
    sex: str  # "M" or "F"
    length_mm: float  # cranio-caudal (longitudinal view, horizontal)
    width_mm: float  # transverse (transverse view, horizontal)
    ap_mm: float  # antero-posterior (both views, vertical)
    margin: str
    echogenicity: str
    composition: str
    calcification: str
    halo: bool
    comet_tail: bool
    capsule_target_mm: float  # wanted minimum distance to the capsule; 0 = touching
    ete: bool  # gross extrathyroidal extension: the nodule bulges through the capsule
    vertical: str  # third of the lobe, wanted
    horizontal: str  # half of the lobe in the transverse view, wanted
    anterior: bool  # nearest capsule wanted anterior (else posterior/lateral)
    central_node: bool  # suspicious central-compartment (level VI) node: seen only in the report
    vascularity: str  # "none", "peripheral", "internal": Doppler, seen only in the report
    lobe_length_mm: float
    lobe_width_mm: float
    lobe_ap_mm: float
    parenchyma: str = "homogeneous"  # or "heterogeneous" (thyroiditis-like background)
    # Pixel factors of the fusion profile (None in the standard profile: nothing drawn, nothing recorded)
    spiculation: float | None = None  # 0..1, amplitude of the spikes added to the drawn outline
    foci_per_cm2: float | None = None  # punctate echogenic foci per cm2 of nodule section (0 = none)
    heterogeneity: float | None = None  # 0..1, amplitude of the coarse internal echo texture

    @property
    def size_mm(self) -> float:
        return max(self.length_mm, self.width_mm, self.ap_mm)

    def to_dict(self) -> dict[str, Any]:
        """All fields; the pixel factors only when drawn (so standard params.jsonl stay as they were)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in PIXEL_FACTORS}


PIXEL_FACTORS = ("spiculation", "foci_per_cm2", "heterogeneity")


def draw_findings(rng: np.random.Generator) -> Findings:
    """One patient and index nodule. Distributions follow thyroid-nodule series of PTC cohorts."""
    z = float(rng.normal())
    sex = "M" if rng.random() < 0.27 else "F"
    age = int(np.clip(round(rng.normal(45.0, 13.0)), 18, 85))

    size = float(np.clip(np.exp(rng.normal(np.log(11.0) + 0.18 * z, 0.5)), 4.0, 38.0))
    taller = rng.random() < _sigmoid(-1.6 + 0.9 * z)
    ap_ratio = rng.uniform(1.0, 1.3) if taller else rng.uniform(0.6, 0.95)
    width = size * rng.uniform(0.8, 1.0)
    length = size * rng.uniform(0.85, 1.15)
    ap = min(width * ap_ratio, size * 1.05)
    scale = size / max(length, width, ap)
    length, width, ap = length * scale, width * scale, ap * scale

    p_not_smooth = _sigmoid(-0.7 + 1.6 * z)
    if rng.random() < p_not_smooth:
        margin = str(rng.choice(MARGINS[1:], p=[0.3, 0.3, 0.4]))
    else:
        margin = "smooth"

    u = rng.random()
    p_hypo = _sigmoid(0.2 + 1.5 * z)
    if u < p_hypo:
        echo = "marked-hypo" if rng.random() < _sigmoid(-1.6 + 1.0 * z) else "hypo"
    else:
        echo = "iso" if rng.random() < 0.7 else "hyper"

    composition = "solid"
    if rng.random() < _sigmoid(-1.4 - 1.4 * z):
        composition = "mixed" if rng.random() < 0.6 else "mostly-solid"

    calc = "none"
    if rng.random() < _sigmoid(-1.1 + 1.5 * z):
        calc = "micro"
    elif rng.random() < 0.12:
        calc = "macro"
    elif rng.random() < 0.04:
        calc = "rim"

    halo = margin == "smooth" and echo in ("iso", "hyper") and rng.random() < 0.65
    comet = composition != "solid" and rng.random() < 0.5

    ete = False
    if rng.random() < _sigmoid(-0.5 + 0.9 * z):
        if rng.random() < 0.45:
            target = 0.0
            ete = rng.random() < _sigmoid(-1.2 + 0.8 * z)
        else:
            target = float(rng.uniform(0.4, NEAR_CAPSULE_MM - 0.2))
    else:
        target = float(rng.uniform(NEAR_CAPSULE_MM + 0.3, 8.0))

    vertical = str(rng.choice(VERTICAL, p=[0.3, 0.4, 0.3]))
    horizontal = str(rng.choice(HORIZONTAL))
    central_node = rng.random() < _sigmoid(-1.7 + 1.2 * z)
    v = rng.random()
    p_internal = _sigmoid(-1.2 + 0.9 * z)
    vascularity = "internal" if v < p_internal else ("peripheral" if v < p_internal + 0.3 else "none")

    room = 2.0 * min(target, 4.0)  # a far-from-capsule nodule needs a gland that can hold it
    lobe_ap = max(rng.uniform(13.0, 19.0), ap + room + 3.0)
    lobe_width = max(rng.uniform(15.0, 21.0), width + room + 5.0)
    lobe_length = max(rng.uniform(36.0, 46.0), 1.8 * length)
    return Findings(
        aggressiveness=z, side=str(rng.choice(["right", "left"])), age=age, sex=sex,
        length_mm=float(length), width_mm=float(width), ap_mm=float(ap), margin=margin,
        echogenicity=echo, composition=composition, calcification=calc, halo=bool(halo),
        comet_tail=bool(comet), capsule_target_mm=target, ete=bool(ete), vertical=vertical,
        horizontal=horizontal, anterior=bool(rng.random() < 0.6), central_node=bool(central_node),
        vascularity=vascularity, lobe_length_mm=float(lobe_length), lobe_width_mm=float(lobe_width),
        lobe_ap_mm=float(lobe_ap),
        parenchyma="heterogeneous" if rng.random() < 0.12 else "homogeneous",
    )


def draw_fusion_findings(f: Findings, rng: np.random.Generator) -> Findings:
    """The fusion profile's extra latent draws: the pixel-only factors, tied loosely to the
    aggressiveness z (each has its own noise, so the image holds risk the categorical descriptors do
    not), and the two report-only facts drawn again almost independently of z, so the image cannot
    stand in for them."""
    z = f.aggressiveness
    spiculation = _sigmoid(-1.2 + 0.7 * z + 1.3 * float(rng.normal()))
    heterogeneity = _sigmoid(-0.6 + 0.6 * z + 1.3 * float(rng.normal()))
    foci = 0.0
    if f.calcification == "micro":
        foci = float(np.clip(np.exp(rng.normal(np.log(6.0) + 0.3 * z, 0.8)), 1.0, 60.0))
    central_node = bool(rng.random() < _sigmoid(-1.5 + 0.3 * z))
    v = rng.random()
    p_internal = _sigmoid(-1.0 + 0.3 * z)
    vascularity = "internal" if v < p_internal else ("peripheral" if v < p_internal + 0.3 else "none")
    return replace(f, spiculation=spiculation, foci_per_cm2=foci, heterogeneity=heterogeneity,
                   central_node=central_node, vascularity=vascularity)
