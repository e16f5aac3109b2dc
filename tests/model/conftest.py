"""A tiny training folder in the training layout, made here so the tests need nothing else.

Gland: an ellipse; nodule: a darker disc; label: near the capsule -> LLNM (plus some noise), so a
model can learn it in a few epochs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def write_layout(root: Path, studies: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels, views = [], []
    for s in range(studies):
        uid = f"1.2.3.{seed}.{s}"
        near = bool(rng.random() < 0.5)
        llnm = int(rng.random() < (0.85 if near else 0.15))
        report = "irregular margin, suspicious node" if llnm and rng.random() < 0.7 else "smooth nodule"
        labels.append({"study_uid": uid, "llnm": llnm, "risk_level": 1 + llnm + int(llnm and near),
                       "p_true": 0.85 if near else 0.15, "age": int(rng.integers(20, 70)),
                       "sex": "M" if rng.random() < 0.3 else "F", "report": report})
        (root / uid).mkdir(exist_ok=True)
        for v in range(2):
            shape = (80, 100)
            gland = ellipse(shape, 40, 50, 30, 40)
            r = float(rng.uniform(5, 8))
            off = 30 - r - (1 if near else 12)
            cy, cx = 40 + off * (1 if v else -1) * 0.9, 50 + rng.uniform(-8, 8)
            nodule = ellipse(shape, cy, cx, r, r * 1.2) & gland
            image = rng.normal(120, 20, shape)
            image[gland] += 20
            image[nodule] -= 60
            image = np.clip(image, 0, 255).astype(np.uint8)
            stem = f"{uid}/view{v}"
            Image.fromarray(image).save(root / f"{stem}.png")
            Image.fromarray((gland * 255).astype(np.uint8)).save(root / f"{stem}_gland.png")
            Image.fromarray((nodule * 255).astype(np.uint8)).save(root / f"{stem}_nodule.png")
            views.append({"study_uid": uid, "sop_instance_uid": f"{uid}.{v}", "image": f"{stem}.png",
                          "gland_mask": f"{stem}_gland.png", "nodule_mask": f"{stem}_nodule.png",
                          "spacing_row_mm": 0.4, "spacing_col_mm": 0.4, "region_x0": 0, "region_y0": 0,
                          "region_x1": shape[1], "region_y1": shape[0]})
    for name, rows in (("labels.csv", labels), ("views.csv", views)):
        with (root / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory) -> Path:
    return write_layout(tmp_path_factory.mktemp("layout"), studies=40, seed=1)


def fake_text_encoder(texts: list[str], tokens: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stand-in with the real encoder's shapes (for training-loop tests only)."""
    states = np.zeros((len(texts), tokens, 384), dtype=np.float32)
    mask = np.zeros((len(texts), tokens), dtype=np.float32)
    for i, text in enumerate(texts):
        for j, word in enumerate((text or "").split()[:tokens]):
            states[i, j, sum(map(ord, word)) % 384] = 1.0
            mask[i, j] = 1.0
    return states, mask
