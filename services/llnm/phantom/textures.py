"""Optional real nodule texture: internal echo variation of real nodule crops (DDTI) added inside
the synthetic nodule. Only with `--textures DIR`; the generator never needs these files.

DIR is a DDTI-style folder: `cropped/<name>.png` greyscale crops and `mask/<name>.gif` nodule masks
(255 = nodule), or a flat folder of PNG crops (then the central 60 % of each crop is used). Only the
texture (deviation from the crop's own mean inside its nodule) is taken: echo level, margins,
cysts and calcifications stay those of the phantom's findings, so the truth stays known. A nodule
crop that holds calcifications of its own can add bright specks the findings do not list; the
model card of a model trained with textures should say so.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


@lru_cache(maxsize=2)
def load_textures(folder: str) -> tuple[np.ndarray, ...]:
    """Zero-mean float32 texture patches (the bounding box of each nodule, outside set to 0)."""
    root = Path(folder)
    crops = sorted((root / "cropped").glob("*.png")) or sorted(root.glob("*.png"))
    patches = []
    for path in crops:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"), dtype=np.float32)
        mask_path = root / "mask" / f"{path.stem}.gif"
        if mask_path.is_file():
            with Image.open(mask_path) as im:
                mask = np.asarray(im.convert("L")) > 127
        else:
            mask = np.zeros(grey.shape, dtype=bool)
            h, w = grey.shape
            mask[int(0.2 * h):int(0.8 * h), int(0.2 * w):int(0.8 * w)] = True
        if mask.sum() < 400:
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        patch, inside = grey[box], mask[box]
        patch = np.where(inside, patch - patch[inside].mean(), 0.0).astype(np.float32)
        patch.setflags(write=False)
        patches.append(patch)
    if not patches:
        raise FileNotFoundError(f"no nodule crops (PNG, with mask/*.gif or not) found under {root}")
    return tuple(patches)


def apply_texture(image: np.ndarray, nodule: np.ndarray, patches: tuple[np.ndarray, ...],
                  rng: np.random.Generator, strength: float = 0.7) -> np.ndarray:
    """Add one real texture patch, resized to the nodule's box, inside the nodule (soft edge)."""
    if not nodule.any():
        return image
    rows, cols = np.flatnonzero(nodule.any(axis=1)), np.flatnonzero(nodule.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    patch = patches[int(rng.integers(len(patches)))]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((w, h), Image.BILINEAR))
    weight = ndimage.gaussian_filter(nodule[box].astype(np.float32), 1.0)
    out = image.astype(np.float32)
    out[box] += strength * resized * np.where(weight > 0.02, weight, 0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
