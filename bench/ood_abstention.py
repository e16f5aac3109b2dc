"""How often the shipped TMDL abstains, in and out of its training distribution (llnm.model.ood).

    .venv/bin/python bench/ood_abstention.py --data ../shared/data --phantom /tmp/ph-ood-test

- In distribution: the views of an `llnm phantom` folder made with a seed used neither for training
  nor for the OOD fit or its threshold, through the product (segmentation, quality gate, OOD check).
- Out of distribution for the phantom-trained model: every real whole frame of ddti_frames (all case
  splits: none was used to fit the OOD statistics), through the same path.
Reported: views the gate used, and of those the share the OOD check declines, with 95 % CIs
(bootstrap over studies / cases).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from llnm.cli.ood_fit import product_descriptor
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.model.config import preset
from llnm.model.ood import load_for_repository
from llnm.segmentation.data import ddti_case, ddti_frame_pairs, read_grey
from llnm.segmentation.region import find_image_region


def judge(backend, ood, image: np.ndarray, spacing, size: int) -> dict:
    quality, descriptor = product_descriptor(backend, image, spacing, size)
    if descriptor is None:
        return {"gate": [r.code for r in quality.reasons], "ood": None, "score": None}
    score = ood.score(descriptor)
    return {"gate": [], "ood": bool(score > ood.threshold), "score": round(score, 3)}


def rate_ci(groups: dict[str, list[bool]], rounds: int = 1000, seed: int = 0) -> list[float]:
    keys = sorted(groups)
    flat = [x for k in keys for x in groups[k]]
    if not flat:
        return [float("nan")] * 3
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(rounds):
        pick = [x for i in rng.integers(0, len(keys), len(keys)) for x in groups[keys[int(i)]]]
        if pick:
            boots.append(np.mean(pick))
    return [round(float(np.mean(flat)), 3), round(float(np.percentile(boots, 2.5)), 3),
            round(float(np.percentile(boots, 97.5)), 3)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--phantom", type=Path, required=True)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--preset", default="compact")
    args = parser.parse_args(argv)
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    ood = load_for_repository(args.repo)
    if ood is None:
        raise SystemExit(f"{args.repo}/tmdl/1/ood.json is missing: run llnm ood-fit")
    size = preset(args.preset).image_size
    from llnm.model.data import read_layout, read_png

    inside: dict[str, list[bool]] = {}
    gate_ph = []
    for study in read_layout(args.phantom):
        for v in study.views:
            r = judge(backend, ood, read_png(v.image), v.spacing_mm, size)
            gate_ph.append(bool(r["gate"]))
            if r["ood"] is not None:
                inside.setdefault(study.study_uid, []).append(r["ood"])
    outside: dict[str, list[bool]] = {}
    gate_real = []
    for image_path, _ in ddti_frame_pairs(args.data / "ddti_frames", ("train", "select", "val")):
        image = read_grey(image_path)
        view = find_image_region(image).crop(image)
        r = judge(backend, ood, view, None, size)
        gate_real.append(bool(r["gate"]))
        if r["ood"] is not None:
            outside.setdefault(ddti_case(image_path.name), []).append(r["ood"])
    report = {
        "phantom_views": len(gate_ph), "phantom_gate_declined": round(float(np.mean(gate_ph)), 3),
        "phantom_views_scored": sum(len(v) for v in inside.values()),
        "phantom_ood_abstained": rate_ci(inside),
        "real_frames": len(gate_real), "real_gate_declined": round(float(np.mean(gate_real)), 3),
        "real_frames_scored": sum(len(v) for v in outside.values()),
        "real_ood_abstained": rate_ci(outside),
        "threshold": round(ood.threshold, 3), "ood_source": ood.source,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
