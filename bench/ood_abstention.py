"""How often the shipped TMDL abstains, in and out of its training distribution (llnm.model.ood).

    .venv/bin/python bench/ood_abstention.py --data ../shared/data --phantom data/ph-ood-test --real-split val

Every view goes the product's way (segmentation models, quality gate, OOD check: `product_descriptor`).
- In distribution: the views of an `llnm phantom` folder made with a seed used neither for training
  nor for the OOD fit or its threshold; and the real whole frames of ddti_frames of `--real-split`
  (case splits: `val` was used for nothing else; `train` frames are what TMDL was trained on).
- Clearly different (on by default, `--no-altered` skips): the same phantom views and real frames made
  into images no thyroid scanner gives: `mr_like` (smoothed, sigma 4 px, plus light Gaussian noise:
  another modality's texture, no speckle), `posterized` (4 grey levels), `inverted` (grey levels
  reversed: bright nodules in a dark gland) and `noise` (uniform noise of the image's mean and spread).
- Mildly altered, reported for what they are (a scanner's smoothing or a blown-up image can look like
  this): `blurred` (Gaussian blur, sigma 3 px) and `coarse` (every 4 x 4 block one grey value).
- Another matrix size (`--scales`): the same in-distribution phantom views and real frames resized
  (bilinear) as a device with a larger or smaller matrix would send them; TMDL's answer barely moves
  under such a resize, so these should abstain about as often as the views as they are.
Reported per set: views seen, the share the gate declined, views scored, and of those the share the
OOD check declines (95 % CI by bootstrap over studies / cases); and the share of all views that end
"not assessable" (gate or OOD): what a user sees.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from llnm.cli.ood_fit import product_descriptor
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.model.config import preset
from llnm.model.ood import load_for_repository
from llnm.segmentation.data import ddti_case, ddti_frame_pairs, read_grey
from llnm.segmentation.region import find_image_region


def blurred(img: np.ndarray) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(img.astype(np.float64), 3.0), 0, 255).astype(np.uint8)


def inverted(img: np.ndarray) -> np.ndarray:
    return (255 - img.astype(np.int16)).astype(np.uint8)


def coarse(img: np.ndarray) -> np.ndarray:
    small = img[::4, ::4]
    return np.kron(small, np.ones((4, 4), dtype=np.uint8))[:img.shape[0], :img.shape[1]]


def noise(img: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = img.astype(np.float64)
    half = np.sqrt(3.0) * values.std()
    return np.clip(rng.uniform(values.mean() - half, values.mean() + half, img.shape), 0, 255).astype(np.uint8)


def mr_like(img: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(img.astype(np.float64), 4.0)
    return np.clip(smooth + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def posterized(img: np.ndarray) -> np.ndarray:
    return ((img // 64) * 64 + 32).astype(np.uint8)


CLEARLY_DIFFERENT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mr_like": mr_like, "posterized": posterized, "inverted": inverted, "noise": noise}
MILD: dict[str, Callable[[np.ndarray], np.ndarray]] = {"blurred": blurred, "coarse": coarse}


def resized(img: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def judge(backend, ood, image: np.ndarray, spacing, config) -> dict:
    quality, descriptor = product_descriptor(backend, image, spacing, config)
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


def measure(views: Iterable[tuple[str, np.ndarray, object]], backend, ood, config) -> dict:
    """views: (group: a study or case, image, spacing)."""
    ood_by_group: dict[str, list[bool]] = {}
    declined_by_group: dict[str, list[bool]] = {}
    gate = []
    for group, image, spacing in views:
        r = judge(backend, ood, image, spacing, config)
        gate.append(bool(r["gate"]))
        if r["ood"] is not None:
            ood_by_group.setdefault(group, []).append(r["ood"])
        declined_by_group.setdefault(group, []).append(bool(r["gate"]) or bool(r["ood"]))
    out = {"views": len(gate), "gate_declined": round(float(np.mean(gate)), 3) if gate else None,
           "views_scored": sum(len(v) for v in ood_by_group.values()),
           "ood_abstained": rate_ci(ood_by_group), "not_assessable": rate_ci(declined_by_group)}
    for prefix, source in (("p-", "phantom"), ("r-", "real_frames")):  # the altered sets mix both
        part = {g: v for g, v in ood_by_group.items() if g.startswith(prefix)}
        if part and len(part) < len(ood_by_group):
            out[f"ood_abstained_{source}"] = rate_ci(part)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--phantom", type=Path, required=True, help="held-out `llnm phantom` folder")
    parser.add_argument("--real-split", nargs="+", default=["val"], choices=["train", "select", "val"])
    parser.add_argument("--no-altered", action="store_true", help="skip the altered (out of distribution) sets")
    parser.add_argument("--altered-phantom-studies", type=int, default=30,
                        help="phantom studies (the first ones) altered for the out-of-distribution sets")
    parser.add_argument("--scales", type=float, nargs="*", default=[],
                        help="also the in-distribution sets resized by these factors (another matrix size)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--preset", default="compact")
    args = parser.parse_args(argv)
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    ood = load_for_repository(args.repo)
    if ood is None:
        raise SystemExit(f"{args.repo}/tmdl/1/ood.json is missing: run llnm ood-fit")
    config = preset(args.preset)
    from llnm.model.data import read_layout, read_png

    phantom = [(s.study_uid, read_png(v.image), v.spacing_mm) for s in read_layout(args.phantom) for v in s.views]
    real = []
    for image_path, _ in ddti_frame_pairs(args.data / "ddti_frames", tuple(args.real_split)):
        image = read_grey(image_path)
        real.append((ddti_case(image_path.name), find_image_region(image).crop(image), None))
    report: dict[str, object] = {
        "in_distribution": {"phantom": measure(phantom, backend, ood, config),
                            f"real_frames_{'+'.join(args.real_split)}": measure(real, backend, ood, config)},
        "threshold": ood.threshold, "ood_components": [c.name for c in ood.components], "ood_source": ood.source,
    }
    if args.scales:
        report["other_matrix_size"] = {}
        for scale in args.scales:
            spaced = [(g, resized(img, scale), None if sp is None else (sp[0] / scale, sp[1] / scale))
                      for g, img, sp in phantom]
            report["other_matrix_size"][f"x{scale:g}"] = {
                "phantom": measure(spaced, backend, ood, config),
                "real_frames": measure([(g, resized(img, scale), sp) for g, img, sp in real], backend, ood, config)}
    if not args.no_altered:
        some = {g for g, _, _ in phantom[:2 * args.altered_phantom_studies]}
        for title, alterations in (("clearly_different", CLEARLY_DIFFERENT), ("mildly_altered", MILD)):
            altered = {}
            for name, alter in alterations.items():
                views = [(f"p-{g}", alter(img), sp) for g, img, sp in phantom if g in some] + \
                        [(f"r-{g}", alter(img), sp) for g, img, sp in real]
                altered[name] = measure(views, backend, ood, config)
            report[title] = altered
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
