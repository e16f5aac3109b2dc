"""English radiology report wording for a phantom study.

The report is written the way a radiologist dictates it: it measures the nodule, names its lobe
third, and describes composition, echogenicity, margins and echogenic foci in varied wording. It is
imperfect on purpose (findings are missed or over-called at realistic rates), so the text correlates
with the images without duplicating them. Two facts appear ONLY in the report (Doppler vascularity
and a suspicious central-compartment node); lateral neck nodes are never mentioned (that is the label).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .findings import NEAR_CAPSULE_MM, Findings
from .profiles import ReportNoise


@dataclass
class Report:
    findings: str
    impression: str
    reported: dict = field(default_factory=dict)  # what the text states, for params.jsonl

    @property
    def text(self) -> str:
        """The report as one string: the TEXT items of the SR in document order, joined by a newline
        (no impression item when the reader left it out: fusion profile)."""
        return f"{self.findings}\n{self.impression}" if self.impression else self.findings


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _tirads(comp: str, echo: str, taller: bool, margin: str, ete: bool, foci: str) -> tuple[int, int]:
    points = {"solid": 2, "mostly-solid": 1, "mixed": 1}[comp]
    points += {"hyper": 1, "iso": 1, "hypo": 2, "marked-hypo": 3}[echo]
    points += 3 if taller else 0
    points += 3 if ete else (2 if margin in ("lobulated", "irregular") else 0)
    points += {"none": 0, "comet": 0, "macro": 1, "rim": 2, "micro": 3}[foci]
    level = 1 if points <= 1 else 2 if points == 2 else 3 if points == 3 else 4 if points <= 6 else 5
    return points, level


def write_report(f: Findings, capsule_mm: float, ete_seen: bool, vertical: str, horizontal: str,
                 rng: np.random.Generator, noise: ReportNoise | None = None) -> Report:
    """`capsule_mm`, `ete_seen`, `vertical`, `horizontal`: as realised on the images. `noise`: the
    profile's error rates (default: the standard profile's; its draws are exactly those of before)."""
    noise = noise or ReportNoise()
    extended = noise != ReportNoise()  # a non-standard profile also records what it left out
    side = f.side
    dims = [max(2.0, d + rng.normal(0.0, noise.size_sd_mm)) for d in (f.length_mm, f.width_mm, f.ap_mm)]
    length, width, ap = (f"{d:.0f}" if d >= 10 else f"{d:.1f}" for d in dims)

    def seen(present: bool, sensitivity: float, false_rate: float) -> bool:
        return bool(rng.random() < (sensitivity if present else false_rate))

    echo = f.echogenicity
    if rng.random() < noise.echo_off:  # echo graded one step off
        order = ["hyper", "iso", "hypo", "marked-hypo"]
        echo = order[int(np.clip(order.index(echo) + rng.choice([-1, 1]), 0, 3))]
    margin = f.margin if seen(f.margin != "smooth", noise.margin_sensitivity, 0.0) else "smooth"
    if margin == "smooth" and rng.random() < noise.margin_overcall:  # over-called
        margin = "ill-defined"
    micro = seen(f.calcification == "micro", noise.micro_sensitivity, noise.micro_false)
    macro = f.calcification in ("macro", "rim") and rng.random() < 0.85
    comet = f.comet_tail and rng.random() < 0.7
    ete = seen(ete_seen, noise.ete_sensitivity, 0.03 if capsule_mm < 0.5 else 0.0)
    abut = capsule_mm < 0.5 and not ete and rng.random() < 0.6
    near = (not ete and not abut and capsule_mm < NEAR_CAPSULE_MM and rng.random() < 0.45)
    taller = f.ap_mm > f.width_mm * 1.02 and rng.random() < 0.8
    central = f.central_node and rng.random() < 0.85
    vasc = f.vascularity if rng.random() < 0.9 else "none"
    third = vertical if rng.random() < noise.third_correct else str(rng.choice(["upper", "middle", "lower"]))
    omitted = [name for name, rate in (("calcification", noise.omit_calcification),
                                       ("vascularity", noise.omit_vascularity),
                                       ("impression", noise.omit_impression)) if rate > 0 and rng.random() < rate]

    lobe = (f"The {side} lobe measures {f.lobe_length_mm:.0f} x {f.lobe_width_mm:.0f} x "
            f"{f.lobe_ap_mm:.0f} mm.")
    if f.parenchyma == "heterogeneous":
        other = _pick(rng, ["The parenchyma is diffusely heterogeneous, consistent with thyroiditis.",
                            "Heterogeneous, coarse background echotexture."])
    else:
        other = _pick(rng, [f"The {'left' if side == 'right' else 'right'} lobe and isthmus are unremarkable.",
                            "The contralateral lobe is normal in size and echotexture.",
                            "Background parenchyma is homogeneous."])
    comp_word = {"solid": _pick(rng, ["solid", "solid", "predominantly solid"]) if f.composition == "solid"
                 else "", "mostly-solid": "predominantly solid", "mixed": "mixed cystic and solid"}[f.composition]
    comp_word = comp_word or "solid"
    echo_word = {"hyper": "hyperechoic", "iso": "isoechoic", "hypo": "hypoechoic",
                 "marked-hypo": "markedly hypoechoic"}[echo]
    where = _pick(rng, [f"In the {third} third of the {side} lobe", f"In the {third} pole region of the {side} lobe"
                        if third != "middle" else f"In the mid {side} lobe", f"Within the {third} {side} lobe"])
    horiz = f", {horizontal} aspect" if rng.random() < 0.5 else ""
    sentence = (f"{where}{horiz} there is a {comp_word}, {echo_word} nodule measuring {length} x {width} x {ap} mm")
    sentence += " (taller-than-wide)." if taller else "."
    margin_text = {
        "smooth": _pick(rng, ["Margins are smooth and well circumscribed.", "The margins are smooth.",
                              "It is well defined with smooth margins."]),
        "ill-defined": _pick(rng, ["Margins are ill-defined.", "The margins are poorly defined."]),
        "lobulated": _pick(rng, ["Margins are lobulated.", "The nodule has lobulated, irregular margins."]),
        "irregular": _pick(rng, ["Margins are irregular and spiculated.", "The nodule has irregular margins.",
                                 "Irregular margin with angular contour."]),
    }[margin]
    parts = [lobe, other, sentence, margin_text]
    if f.halo and rng.random() < 0.6:
        parts.append("A thin hypoechoic halo surrounds the nodule.")
    foci = "none"
    calc_parts: list[str] = []
    if micro:
        foci = "micro"
        density = f.foci_per_cm2 or 0.0
        if noise.foci_words and density > 0 and rng.random() < 0.5:  # the one, coarse, word on density
            calc_parts.append("Innumerable punctate echogenic foci (microcalcifications)." if density >= 15 else
                              "A few punctate echogenic foci, possibly microcalcifications." if density < 4 else
                              "Several punctate echogenic foci (microcalcifications).")
        else:
            calc_parts.append(_pick(rng, ["Multiple punctate echogenic foci consistent with microcalcifications "
                                          "are seen.", "Microcalcifications are present.",
                                          "There are punctate echogenic foci (microcalcifications)."]))
    elif macro:
        foci = "rim" if f.calcification == "rim" else "macro"
        calc_parts.append("Peripheral rim calcification is noted." if foci == "rim"
                          else "A coarse macrocalcification with posterior acoustic shadowing is seen.")
    elif comet:
        foci = "comet"
        calc_parts.append("Comet-tail artifacts suggest colloid.")
    else:
        calc_parts.append(_pick(rng, ["No calcifications.", "No echogenic foci.", "No calcifications are identified."]))
    if "calcification" in omitted:  # not stated: TI-RADS and the impression count no foci
        micro, foci = False, "none"
    else:
        parts += calc_parts
    if ete:
        parts.append(_pick(rng, ["The nodule bulges through the capsule, suspicious for extrathyroidal extension.",
                                 "Findings are suspicious for extrathyroidal extension."]))
    elif abut:
        parts.append(_pick(rng, ["The nodule abuts the thyroid capsule.", "It contacts the capsule without "
                                 "clear extrathyroidal extension."]))
    elif near:
        parts.append("The nodule lies close to the capsule.")
    vasc_text = {"internal": "Color Doppler shows internal vascularity.",
                 "peripheral": "Color Doppler shows peripheral vascularity.",
                 "none": _pick(rng, ["No significant vascularity on color Doppler.", ""])}[vasc]
    if "vascularity" in omitted:
        vasc = "not stated"
    else:
        parts.append(vasc_text)
    if central:
        parts.append(_pick(rng, ["A rounded hypoechoic lymph node without fatty hilum is seen in the central "
                                 "compartment (level VI).", "Suspicious central compartment lymph node."]))
    findings = " ".join(p for p in parts if p)

    points, tr = _tirads(f.composition, echo, taller, margin, ete, foci)
    descr = {1: "benign", 2: "not suspicious", 3: "mildly suspicious", 4: "moderately suspicious",
             5: "highly suspicious"}[tr]
    size_mm = max(dims)
    size = f"{size_mm:.0f}" if size_mm >= 10 else f"{size_mm:.1f}"
    fna = (tr == 5 and size_mm >= 10) or (tr == 4 and size_mm >= 15) or (tr == 3 and size_mm >= 25)
    # The impression repeats the suspicious features briefly: a reader (or a 50-token encoder)
    # that stops early still gets them.
    features = [w for w, on in (("irregular margins", margin in ("lobulated", "irregular")),
                                ("microcalcifications", micro), ("a taller-than-wide shape", taller),
                                ("abutting the capsule", abut)) if on]
    impression = f"ACR TI-RADS {tr} ({descr}) nodule in the {third} {side} lobe, {size} mm"
    if features:
        listed = features[0] if len(features) == 1 else ", ".join(features[:-1]) + " and " + features[-1]
        impression += f", with {listed}."
    else:
        impression += "."
    if ete:
        impression += " Possible extrathyroidal extension."
    if central:
        impression += " Suspicious central neck lymph node."
    impression += (" Fine-needle aspiration is recommended." if fna else
                   " Follow-up ultrasound is recommended." if tr >= 3 else " No further follow-up needed.")
    if "impression" in omitted:
        impression = ""
    reported = {"echogenicity": echo, "margin": margin, "microcalcification": micro, "foci": foci,
                "ete": ete, "abuts_capsule": abut, "near_capsule": near, "taller_than_wide": taller,
                "central_node": central, "vascularity": vasc, "third": third, "tirads": tr,
                "tirads_points": points}
    if extended:
        reported.update(size_mm=round(size_mm, 1), omitted=omitted)
    return Report(findings=findings, impression=impression, reported=reported)
