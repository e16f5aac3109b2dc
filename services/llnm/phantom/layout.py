"""The on-disk set: DICOM per study plus the truth/label layout (described in the package docstring).

Studies are independent functions of (seed, index), so a set can be written by several processes
and is still byte-identical to a single-process run.
"""

from __future__ import annotations

import csv
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .dicom import write_study_dicom
from .profiles import PROFILES, STANDARD, PhantomProfile, get_profile
from .study import generate_study

LABEL_COLUMNS = ["study_uid", "llnm", "risk_level", "p_true", "age", "sex", "report"]
VIEW_COLUMNS = ["study_uid", "sop_instance_uid", "image", "gland_mask", "nodule_mask", "spacing_row_mm",
                "spacing_col_mm", "region_x0", "region_y0", "region_x1", "region_y1", "view"]


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_one(out: Path, seed: int, index: int, rows: int, cols: int, rgb_fraction: float,
               textures: str | None, profile: str = "standard", dicom: bool = True
               ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    study = generate_study(seed, index, rows=rows, cols=cols, textures=textures, profile=profile)
    if dicom:
        pick = np.random.default_rng([seed, index, 7]).random(len(study.views))
        rgb_views = {k + 1 for k in range(len(study.views)) if pick[k] < rgb_fraction}
        write_study_dicom(study, out / study.study_uid, rgb_views)
    view_rows = []
    for view in study.views:
        uid = view.sop_instance_uid
        image = f"truth/images/{uid}.png"
        gland = f"truth/masks/{uid}_gland.png"
        nodule = f"truth/masks/{uid}_nodule.png"
        _png(out / image, view.image)
        _png(out / gland, view.gland.astype(np.uint8) * 255)
        _png(out / nodule, view.nodule.astype(np.uint8) * 255)
        x0, y0, x1, y1 = view.region
        view_rows.append({
            "study_uid": study.study_uid, "sop_instance_uid": uid, "image": image, "gland_mask": gland,
            "nodule_mask": nodule, "spacing_row_mm": f"{view.spacing_mm[0]:.6g}",
            "spacing_col_mm": f"{view.spacing_mm[1]:.6g}", "region_x0": x0, "region_y0": y0,
            "region_x1": x1, "region_y1": y1, "view": view.name})
    label = {"study_uid": study.study_uid, "llnm": study.llnm, "risk_level": study.risk_level,
             "p_true": f"{study.p_true:.6f}", "age": study.age, "sex": study.sex, "report": study.report.text}
    if study.profile != STANDARD:
        label["profile"] = study.profile.name
    return label, view_rows, json.dumps(study.params(), sort_keys=True)


def write_phantom_set(out: Path, studies: int, seed: int, rows: int = 600, cols: int = 800,
                      rgb_fraction: float = 0.0, jobs: int = 1, start: int = 0,
                      textures: str | Path | None = None, progress: bool = False,
                      profile: str | PhantomProfile | None = None, dicom: bool = True) -> Path:
    """Write studies start .. start+studies-1 of this seed under `out`; return `out`. Files of the
    same names are overwritten; other files already in `out` are left alone. A non-standard
    `profile` is recorded in a last labels.csv column `profile`, in params.jsonl and, with all its
    settings, in truth/profile.json (a standard set is written exactly as before profiles existed).
    `dicom` False: the training layout and the truth only, the same files as with DICOM (what training
    and evaluation read; the DICOM studies are what the worker reads)."""
    prof = get_profile(profile)
    if prof.name not in PROFILES or PROFILES[prof.name] != prof:
        raise ValueError("write_phantom_set takes a named profile (profiles.PROFILES): worker processes get the name")
    out = Path(out)
    (out / "truth" / "images").mkdir(parents=True, exist_ok=True)
    (out / "truth" / "masks").mkdir(parents=True, exist_ok=True)
    indices = range(start, start + studies)
    tex = str(textures) if textures else None
    args = [(out, seed, i, rows, cols, rgb_fraction, tex, prof.name, dicom) for i in indices]
    if jobs > 1 and studies > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(tqdm(pool.map(_write_one, *zip(*args), chunksize=4), total=studies,
                                unit="study", disable=not progress))
    else:
        results = [_write_one(*a) for a in tqdm(args, unit="study", disable=not progress)]
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        columns = LABEL_COLUMNS if prof == STANDARD else [*LABEL_COLUMNS, "profile"]
        writer = csv.DictWriter(fh, columns, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writeheader()
        writer.writerows(label for label, _, _ in results)
    with open(out / "views.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, VIEW_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for _, view_rows, _ in results:
            writer.writerows(view_rows)
    with open(out / "truth" / "params.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for _, _, line in results)
    if prof != STANDARD:
        (out / "truth" / "profile.json").write_text(json.dumps(prof.to_dict(), indent=2, sort_keys=True) + "\n")
    return out

