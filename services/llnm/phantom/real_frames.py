"""Two-view studies built from REAL whole frames, with LLNM labels drawn from a documented risk model.

No public cohort carries LLNM labels, so TMDL learns where real scans live only from labels drawn from
a known model, as on the phantom, but over REAL images, REAL nodule outlines and REAL descriptors:
`ddti_frames/` (whole frames, the nodule outline, TI-RADS descriptors, age, sex; see its README).

Per case (a patient; frames of a case never cross the train/select/val split, `case_split`):
- each frame is cut to its ultrasound image (llnm.segmentation.region); the index nodule is the largest
  outlined nodule; the gland mask comes from the shipped gland model and is kept only when it covers
  at least `MIN_INSIDE_GLAND` of the outlined nodule (every nodule lies in the thyroid);
- the factors the paper names are measured on those masks (capsule distance by CPDT, size, third of
  the lobe) with a NOMINAL spacing (`NOMINAL_SPACING_MM`: DDTI publishes no calibration) and read from
  the descriptors (composition, echogenicity, margins, calcifications, TI-RADS, sex, age);
- the label: P(LLNM) = P(carcinoma | TI-RADS) x P(LLNM | carcinoma, factors). LLNM presupposes a
  carcinoma, so TI-RADS 2-3 nodules are almost never positive (`MALIGNANCY`, from ACR TI-RADS risk
  strata); the second factor is a logistic model in the directions of the paper (`WEIGHTS`);
- the report is written from the descriptors in radiology language with realistic noise (omissions,
  synonyms, order), never naming the label;
- two views: two frames of the case when it has two, else the frame and its mirror image.
Several studies per case (`studies_per_case`) draw new labels, reports and view pairs.
Writes the training layout of llnm.model.data (labels.csv with p_true and tirads, views.csv, PNGs).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from llnm.features import extract_features
from llnm.phantom.risk import auc
from llnm.segmentation.data import case_split, ddti_case, paired_files, read_grey, read_mask
from llnm.segmentation.region import find_image_region

NOMINAL_SPACING_MM = (0.15, 0.15)  # DDTI frames: about 4-5 cm of depth over 300 rows; not calibrated
MIN_INSIDE_GLAND = 0.85
NEAR_CAPSULE_MM = 2.5
#: P(carcinoma) by TI-RADS grade (ACR TI-RADS risk strata and the DDTI grading); blank: from descriptors
MALIGNANCY = {"2": 0.01, "3": 0.03, "4a": 0.10, "4b": 0.35, "4c": 0.70, "5": 0.90}
TIRADS_ORDER = {"2": 2.0, "3": 3.0, "4a": 4.0, "4b": 4.33, "4c": 4.67, "5": 5.0}
INTERCEPT = -1.3  # P(LLNM | carcinoma) about 0.2-0.6 over the factors, as in PTC series
WEIGHTS = {
    "near_capsule": 1.4, "touching_capsule": 0.5, "upper_third": 0.8, "middle_third": 0.4,
    "log2_size_per_10mm": 0.7, "margin_ill-defined": 0.3, "margin_lobulated": 0.5, "margin_irregular": 0.9,
    "echo_hypo": 0.5, "echo_marked-hypo": 0.8, "echo_hyper": -0.3, "calc_micro": 0.9, "calc_macro": 0.2,
    "composition_cystic": -1.0, "male": 0.6, "age_per_10y_over_45": -0.3,
}


def normalise(row: dict[str, str]) -> dict[str, str | None]:
    """The DDTI descriptor vocabulary mapped onto the phantom's (None: not recorded)."""
    def pick(value: str, table: dict[str, str]) -> str | None:
        value = (value or "").strip().lower()
        for key, out in table.items():
            if key in value:
                return out
        return None

    return {
        "composition": pick(row.get("composition", ""), {"predominantly cystic": "cystic", "spongiform": "cystic",
                                                         "predominantly solid": "mostly-solid", "dense": "solid",
                                                         "solid": "solid", "cystic": "cystic"}),
        "echogenicity": pick(row.get("echogenicity", ""), {"marked": "marked-hypo", "hypo": "hypo", "iso": "iso",
                                                           "hyper": "hyper"}),
        "margin": pick(row.get("margins", ""), {"well": "smooth", "ill": "ill-defined", "lobulated": "lobulated",
                                                "spiculated": "irregular"}),
        "calcification": pick(row.get("calcifications", ""), {"micro": "micro", "macro": "macro", "non": "none"}),
        "tirads": (row.get("tirads") or "").strip().lower() or None,
        "sex": (row.get("sex") or "").strip().upper()[:1] or None,
        "age": (row.get("age") or "").strip() or None,
    }


def tirads_from_descriptors(d: dict) -> str:
    """ACR-style points from what is recorded, for frames without a grade."""
    points = {"solid": 2, "mostly-solid": 1, "cystic": 0, None: 1}[d["composition"]]
    points += {"hyper": 1, "iso": 1, "hypo": 2, "marked-hypo": 3, None: 1}[d["echogenicity"]]
    points += {"lobulated": 2, "irregular": 2, "ill-defined": 0, "smooth": 0, None: 0}[d["margin"]]
    points += {"micro": 3, "macro": 1, "none": 0, None: 0}[d["calcification"]]
    return "2" if points <= 2 else "3" if points == 3 else "4a" if points == 4 else "4b" if points <= 6 else "4c"


def design(d: dict, capsule_mm: float, size_mm: float, vertical: str) -> dict[str, float]:
    age = float(d["age"]) if d["age"] else 45.0
    x = {"near_capsule": float(capsule_mm < NEAR_CAPSULE_MM), "touching_capsule": float(capsule_mm < 0.5),
         "upper_third": float(vertical == "upper"), "middle_third": float(vertical == "middle"),
         "log2_size_per_10mm": math.log2(max(size_mm, 1.0) / 10.0), "male": float(d["sex"] == "M"),
         "age_per_10y_over_45": (age - 45.0) / 10.0}
    for key in WEIGHTS:
        for prefix, value in (("margin_", d["margin"]), ("echo_", d["echogenicity"]),
                              ("calc_", d["calcification"]), ("composition_", d["composition"])):
            if key.startswith(prefix):
                x[key] = float(key == prefix + str(value))
    return x


def p_llnm(d: dict, capsule_mm: float, size_mm: float, vertical: str) -> float:
    grade = d["tirads"] if d["tirads"] in MALIGNANCY else tirads_from_descriptors(d)
    x = design(d, capsule_mm, size_mm, vertical)
    z = INTERCEPT + sum(WEIGHTS[k] * x.get(k, 0.0) for k in WEIGHTS)
    return MALIGNANCY[grade] / (1.0 + math.exp(-z))


def write_report(d: dict, size_mm: float, vertical: str, near: bool, rng: np.random.Generator) -> str:
    """Findings and impression from the descriptors; each descriptor may be omitted or paraphrased."""
    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    def keep(p: float = 0.85) -> bool:
        return bool(rng.random() < p)

    comp = {"solid": ["solid", "solid", "predominantly solid"], "mostly-solid": ["predominantly solid", "mostly solid"],
            "cystic": ["predominantly cystic", "spongiform", "mixed cystic and solid"], None: ["solid"]}[d["composition"]]
    echo = {"hyper": ["hyperechoic"], "iso": ["isoechoic"], "hypo": ["hypoechoic"],
            "marked-hypo": ["markedly hypoechoic", "very hypoechoic"], None: [""]}[d["echogenicity"]]
    size = f"{size_mm:.0f}" if size_mm >= 10 else f"{size_mm:.1f}"
    parts = [f"There is a {pick(comp)}{', ' + pick(echo) if keep() and pick(echo) else ''} nodule "
             f"{pick([f'in the {vertical} third', f'in the {vertical} pole region', 'in the lobe'])}, "
             f"measuring about {size} mm."]
    margin = {"smooth": ["Margins are smooth.", "Well-defined, smooth margins."],
              "ill-defined": ["Margins are ill-defined.", "Poorly defined margins."],
              "lobulated": ["Margins are microlobulated.", "Lobulated margins."],
              "irregular": ["Margins are spiculated and irregular.", "Irregular, spiculated margin."],
              None: [""]}[d["margin"]]
    calc = {"micro": ["Microcalcifications are present.", "Punctate echogenic foci (microcalcifications)."],
            "macro": ["Coarse macrocalcification.", "Macrocalcifications are seen."],
            "none": ["No calcifications.", "No echogenic foci."], None: [""]}[d["calcification"]]
    extra = [pick(margin)] if keep() else []
    extra += [pick(calc)] if keep() else []
    if near and keep(0.5):
        extra.append(pick(["The nodule lies close to the capsule.", "It abuts the thyroid capsule."]))
    rng.shuffle(extra)
    findings = " ".join(p for p in parts + extra if p)
    grade = d["tirads"] if d["tirads"] in MALIGNANCY else None
    impression = (f"{pick(['ACR TI-RADS', 'TI-RADS', 'TIRADS'])} {grade.upper()} nodule." if grade and keep(0.9)
                  else "Thyroid nodule, see findings.")
    return f"{impression}\n{findings}" if keep(0.5) else f"{findings}\n{impression}"


@dataclass
class FrameCase:
    name: str
    image: np.ndarray  # the ultrasound image (region crop), uint8
    gland: np.ndarray
    nodule: np.ndarray  # the index nodule
    descriptors: dict


def index_nodule(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def load_frames(frames_dir: Path, splits: tuple[str, ...], backend) -> tuple[dict[str, list[FrameCase]], dict]:
    """Usable frames per case; and counts of what was dropped and why."""
    from llnm.segmentation.gland import segment_gland

    with open(frames_dir / "frames.csv", newline="", encoding="utf-8") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    cases: dict[str, list[FrameCase]] = {}
    dropped = {"no_gland_cover": 0, "no_nodule": 0}
    for image_path, mask_path in paired_files(frames_dir / "image", frames_dir / "mask"):
        if case_split(image_path.name) not in splits or image_path.stem not in rows:
            continue
        image, mask = read_grey(image_path), read_mask(mask_path)
        region = find_image_region(image)
        image, mask = region.crop(image), index_nodule(region.crop(mask))
        if mask.sum() < 30:
            dropped["no_nodule"] += 1
            continue
        gland = segment_gland(backend, image)
        if gland is None or (gland & mask).sum() / mask.sum() < MIN_INSIDE_GLAND:
            dropped["no_gland_cover"] += 1
            continue
        cases.setdefault(ddti_case(image_path.name), []).append(
            FrameCase(image_path.stem, image, gland | mask, mask, normalise(rows[image_path.stem])))
    return cases, dropped


def generate(frames_dir: Path, out: Path, splits: tuple[str, ...], backend, studies_per_case: int = 3,
             seed: int = 0, image_size: int = 48) -> dict:
    """Write the training layout of real-frame studies into `out`; returns counts and the Bayes AUC."""
    rng = np.random.default_rng(seed)
    cases, dropped = load_frames(frames_dir, splits, backend)
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels, views, p_all, y_all = [], [], [], []
    for case in sorted(cases):
        frames = cases[case]
        for k in range(studies_per_case):
            uid = f"2.25.{int.from_bytes(f'{seed}-{case}-{k}'.encode(), 'big') % 10**30}"
            chosen = [frames[i] for i in rng.permutation(len(frames))[:2]]
            pair = [(f.image, f.gland, f.nodule, f.name) for f in chosen]
            if len(pair) == 1:
                f = chosen[0]
                pair.append((f.image[:, ::-1], f.gland[:, ::-1], f.nodule[:, ::-1], f.name + "-mirror"))
            feats = [extract_features(img, g, n, NOMINAL_SPACING_MM, size=image_size) for img, g, n, _ in pair]
            capsule = min(f.capsule_distance_mm for f in feats)
            size = max(f.length_mm for f in feats)
            vertical = feats[0].location.get("vertical", "middle")
            d = chosen[0].descriptors
            p = p_llnm(d, capsule, size, vertical)
            y = int(rng.random() < p)
            level = 1 if not y else (3 if rng.random() < p ** 0.5 else 2)
            report = write_report(d, size, vertical, capsule < NEAR_CAPSULE_MM, rng)
            grade = d["tirads"] if d["tirads"] in MALIGNANCY else ""
            labels.append({"study_uid": uid, "llnm": y, "risk_level": level, "p_true": f"{p:.6f}",
                           "age": d["age"] or "", "sex": d["sex"] or "", "report": report, "tirads": grade,
                           "case": case})
            for v, (img, g, n, name) in enumerate(pair):
                stem = f"{uid}-{v}"
                for suffix, arr in (("", img), ("_gland", g), ("_nodule", n)):
                    Image.fromarray(arr.astype(np.uint8) * (255 if arr.dtype == bool else 1)).save(
                        out / "images" / f"{stem}{suffix}.png")
                views.append({"study_uid": uid, "sop_instance_uid": f"{uid}.{v + 1}", "image": f"images/{stem}.png",
                              "gland_mask": f"images/{stem}_gland.png", "nodule_mask": f"images/{stem}_nodule.png",
                              "spacing_row_mm": NOMINAL_SPACING_MM[0], "spacing_col_mm": NOMINAL_SPACING_MM[1],
                              "region_x0": "", "region_y0": "", "region_x1": "", "region_y1": "",
                              "view": "", "frame": name})  # DDTI frames do not say their orientation
            p_all.append(p)
            y_all.append(y)
    _write_csv(out / "labels.csv", labels)
    _write_csv(out / "views.csv", views)
    bayes = auc(np.array(p_all), np.array(y_all)) if labels else float("nan")
    return {"out": str(out), "cases": len(cases), "studies": len(labels), "prevalence": float(np.mean(y_all)) if y_all else None,
            "bayes_auc": bayes, "dropped_frames": dropped, "splits": list(splits), "seed": seed}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["study_uid"])
        writer.writeheader()
        writer.writerows(rows)
