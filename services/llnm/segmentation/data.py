"""Reading the real training sets (TG3K gland masks, DDTI nodule crops and whole frames) and folders of
image/mask pairs.

Splits are by DDTI case id (a patient), never by image: `ddti_split` puts a fifth of the cases in
"val" (held out: never trained on, never used to choose anything); `case_split` further sets aside
another fifth of the remaining cases as "select", the split on which epochs and thresholds are chosen.

Used by training and by `llnm evaluate-seg`; numpy and Pillow only. The data themselves live outside
the repository (`../shared/data`, see its README) and are never copied into it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff")
#: DDTI cases whose hash falls in this bucket (of 5) form the validation split (about 20 %).
DDTI_VAL_BUCKET = 0
#: ... and this bucket the selection split (model selection, thresholds) carved out of training cases.
DDTI_SELECT_BUCKET = 1


def read_grey(path: Path) -> np.ndarray:
    """(H, W) uint8 greyscale of any image file Pillow reads."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool: grey values above 127 are foreground (JPEG masks blur the 0/255 edge)."""
    return read_grey(path) > 127


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def paired_files(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs matched by file stem, whatever their formats; unmatched images are skipped."""
    by_stem = {p.stem: p for p in image_files(masks)}
    return [(p, by_stem[p.stem]) for p in image_files(images) if p.stem in by_stem]


def ddti_case(name: str) -> str:
    """The patient case id of a DDTI file name (`<case>_<image>[(k)]`)."""
    return Path(name).stem.split("_", 1)[0]


def ddti_split(name: str) -> str:
    """'train' or 'val' by a hash of the case id: stable, and every image of a case on one side."""
    digest = hashlib.sha256(ddti_case(name).encode()).digest()
    return "val" if digest[0] % 5 == DDTI_VAL_BUCKET else "train"


def case_split(name: str) -> str:
    """'train', 'select' or 'val' by the case id's hash; 'val' agrees with `ddti_split`."""
    bucket = hashlib.sha256(ddti_case(name).encode()).digest()[0] % 5
    return {DDTI_VAL_BUCKET: "val", DDTI_SELECT_BUCKET: "select"}.get(bucket, "train")


def ddti_frame_pairs(root: Path, splits: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """DDTI whole frames (`ddti_frames/`: image/*.jpg, mask/*.png) of the given `case_split` splits."""
    root = Path(root)
    return [(i, m) for i, m in paired_files(root / "image", root / "mask") if case_split(i.name) in splits]


def ddti_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """DDTI (crop, mask) pairs of one split; root holds `cropped/` and `mask/`."""
    root = Path(root)
    return [(i, m) for i, m in paired_files(root / "cropped", root / "mask") if ddti_split(i.name) == split]


def tg3k_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """TG3K (image, mask) pairs of one split; root holds `train/` and `val/`, each with image/ and mask/."""
    base = Path(root) / split
    return paired_files(base / "image", base / "mask")
