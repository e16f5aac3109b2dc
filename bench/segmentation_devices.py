"""How the segmentation holds on frames that look as if another device made them: other sizes and another
grey-level response, through the product's path (image found, both models, the quality gate).

    .venv/bin/python bench/segmentation_devices.py --data ../shared/data --split select \
        --scales 0.6 1.0 1.6 --gammas 0.7 1.0 1.4 --blurs 1.5 --marks calipers text --mark-scales 1 2

Each ddti_frames frame of the split (and its outline) is resized by each scale (bilinear for the image,
nearest for the outline; DDTI frames are 560 x 360, other devices send 640 x 480 to 1280 x 1024), and
its grey levels mapped by each gamma (255 (g / 255)^gamma: another display curve), blurred by a
Gaussian of each sigma in pixels (a lower-frequency transducer, a softer vendor filter), re-encoded as
JPEG at each quality (`--jpegs`: a lossy transfer syntax or another device's export), or marked with
the sonographer's calipers (a bright "+" at both ends of the nodule's long and short axes, joined by
dotted lines, as most devices burn them in when the nodule is measured; wider or dimmer as other
devices draw them) or text written over the tissue (`MARKS`), one change at a time beside
the unchanged frame; with --mark-scales the marks are also drawn on the frame resized (a device with a
larger matrix). Per condition: nodule Dice (mean), the share of frames with IoU >= 0.5,
the true nodule inside the predicted gland (median), the gate's declines, with 95 % CIs by bootstrap
over cases, and the paired difference to the unchanged frames (marks on a resized frame: to that
frame without them). A condition that falls clearly below the
unchanged frames names a dependence on the device that the independent check on other devices would
find. Nothing is chosen here; run it on `select` to look, and once on `val` to report.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.segmentation.data import ddti_case, ddti_frame_pairs, read_grey, read_mask
from llnm.segmentation.evaluate import evaluate_image
from llnm.segmentation.preprocess import regrade, soften

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segmentation_frames import STATS, bootstrap_by_case  # noqa: E402


def rescale(image: np.ndarray, truth: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame (grey or RGB; bilinear) and its outline (nearest) resized by `scale`."""
    h, w = image.shape[:2]
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    outline = np.asarray(Image.fromarray(truth.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    return resized, outline


def axis_ends(truth: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two ends of the outlined nodule's long axis and of its short axis (principal axes of its
    pixels), (row, col) each: where a sonographer puts the calipers."""
    rows, cols = np.nonzero(truth)
    points = np.stack([rows, cols], axis=1).astype(float)
    centre = points.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((points - centre).T))
    pairs = []
    for axis in (vectors[:, 1], vectors[:, 0]):  # long axis first
        along = (points - centre) @ axis
        pairs.append((centre + along.min() * axis, centre + along.max() * axis))
    return pairs


def draw_calipers(image: np.ndarray, truth: np.ndarray, width: int = 1, level: int = 255) -> np.ndarray:
    """The frame with calipers burned in on every outlined nodule: a "+" (arms 1 % of the frame's width)
    at each axis end and a dotted line between each pair, `width` pixels wide at grey `level`. One pixel
    of white is what most devices draw on a 560-pixel frame; wider or dimmer marks stand in for larger
    matrices and other vendors' overlays."""
    out = image.copy()
    arm = max(3, round(0.01 * out.shape[1]))
    lo, hi = -((width - 1) // 2), width // 2 + 1  # the brush: `width` pixels across the line
    labels, count = ndimage.label(truth)
    ends = [pair for k in range(1, count + 1) if (labels == k).sum() >= 12 for pair in axis_ends(labels == k)]
    for start, end in ends:
        steps = max(1, int(np.hypot(*(end - start))))
        for k in range(0, steps, 3 + width):
            r, c = np.round(start + (end - start) * k / steps).astype(int)
            out[max(0, r + lo):max(0, r + hi), max(0, c + lo):max(0, c + hi)] = level
        for r, c in (np.round(start).astype(int), np.round(end).astype(int)):
            out[max(0, r - arm):max(0, r + arm + 1), max(0, c + lo):max(0, c + hi)] = level
            out[max(0, r + lo):max(0, r + hi), max(0, c - arm):max(0, c + arm + 1)] = level
    return out


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The frame encoded as baseline JPEG at `quality` and decoded again (Pillow, 4:2:0 is moot for grey)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def draw_labels(image: np.ndarray, truth: np.ndarray, thickness: int = 1, level: int = 255) -> np.ndarray:
    """The frame with a sonographer's text written over the tissue: "N1", "N2", ... just above and left of
    each outlined nodule, and the view's label ("RT LOBE TRANS") across the upper third of the frame,
    about 3 % of the frame's height tall, strokes `thickness` pixels wide."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    h, w = out.shape
    scale = 0.03 * h / 22  # Hershey simplex is 22 pixels tall at scale 1
    labels, count = ndimage.label(truth)
    places = [("RT LOBE TRANS", (round(0.25 * w), round(0.3 * h)))]
    for k in range(1, count + 1):
        rows, cols = np.nonzero(labels == k)
        if len(rows) >= 12:
            places.append((f"N{len(places)}", (max(0, int(cols.min()) - 4), max(8, int(rows.min()) - 4))))
    for text, origin in places:
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, int(level), thickness, cv2.LINE_AA)
    return out


#: marks a device burns in, by name: what `--marks` draws
MARKS = {
    "calipers": lambda image, truth: draw_calipers(image, truth),
    "calipers-2px": lambda image, truth: draw_calipers(image, truth, width=2),
    "calipers-3px": lambda image, truth: draw_calipers(image, truth, width=3),
    "calipers-dim": lambda image, truth: draw_calipers(image, truth, level=200),
    "text": lambda image, truth: draw_labels(image, truth),
    "text-bold": lambda image, truth: draw_labels(image, truth, thickness=2),
}


def conditions(scales: list[float], gammas: list[float], blurs: list[float] = (), marks: list[str] = (),
               mark_scales: list[float] = (1.0,), jpegs: list[int] = ()) -> list[tuple[str, dict, str | None]]:
    """(label, change, the label of the condition it is paired with) per condition: the frame changes
    are paired with the unchanged frame, marks with the frame at the same scale without them (a device
    with a larger matrix: the frame resized, then the marks drawn)."""
    out: list[tuple[str, dict, str | None]] = [("unchanged", {}, None)]
    scales = list(scales) + [s for s in mark_scales if s not in scales and marks]
    out += [(f"scale {s:g}", {"scale": s}, "unchanged") for s in scales if s != 1.0]
    out += [(f"gamma {g:g}", {"gamma": g}, "unchanged") for g in gammas if g != 1.0]
    out += [(f"blur {b:g}", {"blur": b}, "unchanged") for b in blurs if b > 0]
    out += [(f"jpeg {q}", {"jpeg": q}, "unchanged") for q in jpegs]
    for s in mark_scales:
        out += [(kind, {"marks": kind}, "unchanged") if s == 1.0 else
                (f"{kind} x{s:g}", {"scale": s, "marks": kind}, f"scale {s:g}") for kind in marks]
    return out


def altered(image: np.ndarray, truth: np.ndarray, change: dict) -> tuple[np.ndarray, np.ndarray]:
    """The frame and its outline under one condition of `conditions`."""
    if "scale" in change:
        image, truth = rescale(image, truth, change["scale"])
    if "gamma" in change:
        image = regrade(image, change["gamma"])
    if "blur" in change:
        image = soften(image, change["blur"])
    if "jpeg" in change:
        image = jpeg(image, change["jpeg"])
    if "marks" in change:
        image = MARKS[change["marks"]](image, truth)
    return image, truth


def paired_difference(records: list[dict], reference: list[dict], key: str, rounds: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of (record - reference) over frames, 95 % CI resampling cases."""
    diffs = [(ddti_case(r["name"]), float(r[key]) - float(q[key])) for r, q in zip(records, reference)]
    by_case: dict[str, list[float]] = {}
    for case, d in diffs:
        by_case.setdefault(case, []).append(d)
    cases = sorted(by_case)
    rng = np.random.default_rng(seed)
    boot = [np.mean([d for k in rng.integers(0, len(cases), len(cases)) for d in by_case[cases[int(k)]]])
            for _ in range(rounds)]
    return (float(np.mean([d for _, d in diffs])), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--split", choices=["val", "select"], default="select")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--scales", type=float, nargs="*", default=[0.6, 1.6], help="none: no resized frames")
    parser.add_argument("--gammas", type=float, nargs="*", default=[0.7, 1.4], help="none: no regraded frames")
    parser.add_argument("--blurs", type=float, nargs="*", default=[], help="Gaussian sigmas in pixels")
    parser.add_argument("--marks", nargs="*", default=[], choices=sorted(MARKS),
                        help="also conditions with these marks burned in (calipers, text over the tissue)")
    parser.add_argument("--jpegs", type=int, nargs="*", default=[],
                        help="JPEG qualities: the frame re-encoded (lossy transfer syntaxes, other devices' exports)")
    parser.add_argument("--mark-scales", type=float, nargs="+", default=[1.0],
                        help="draw the marks on the frame resized by each of these (larger matrices)")
    parser.add_argument("--out", type=Path, default=Path("runs/seg-devices"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    frames = ddti_frame_pairs(args.data / "ddti_frames", (args.split,))
    backend = OnnxRuntimeBackend(args.repo, threads=1)
    table, done = {}, {}
    for label, change, paired in conditions(args.scales, args.gammas, args.blurs, args.marks, args.mark_scales, args.jpegs):
        records = []
        for image_path, mask_path in frames:
            image, truth = altered(read_grey(image_path), read_mask(mask_path), change)
            records.append(evaluate_image(backend, "nodule", image_path.stem, image, truth))
        row = {name: [round(v, 3) if v is not None else None for v in bootstrap_by_case(records, stat)]
               for name, stat in STATS.items()}
        if paired is not None:
            row[f"dice_minus_{paired}".replace(" ", "_")] = [
                round(v, 3) for v in paired_difference(records, done[paired], "dice")]
        done[label] = records
        row["frames"] = len(records)
        table[label] = row
        print(json.dumps({label: row}), flush=True)
    (args.out / f"summary-{args.split}.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
