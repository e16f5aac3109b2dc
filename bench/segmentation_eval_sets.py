"""Write the folders the segmentation figures of the model card were measured on (outside the repo).

    .venv/bin/python bench/segmentation_eval_sets.py --data ../shared/data --out /tmp/llnm-seg-eval

- `ddti_val/{images,masks}`: the DDTI crops of the validation cases (split by case id, llnm.segmentation.data);
- `tg3k_val/{images,masks}`: links to TG3K val;
- `composed_val/{images,masks}`: one whole frame per DDTI val crop, composed on a TG3K val frame
  (llnm.segmentation.compose, seed 1234; training used seed 0 and TG3K train frames);
- `phantom/` + `phantom_{nodule,gland}/{images,masks}`: `llnm phantom --studies 10 --seed 11` views
  (the nodule model's phantom training frames used seed 101).
Then: `llnm evaluate-seg --model nodule --images OUT/ddti_val/images --masks OUT/ddti_val/masks`, etc.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from llnm.segmentation.compose import compose_frame
from llnm.segmentation.data import ddti_pairs, read_grey, read_mask, tg3k_pairs


def link_pairs(pairs, out: Path) -> int:
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        for src, sub in ((image, "images"), (mask, "masks")):
            dst = out / sub / src.name
            if not dst.exists():
                os.symlink(src.resolve(), dst)
    return len(pairs)


def write_pair(out: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    Image.fromarray(image).save(out / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{name}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("/tmp/llnm-seg-eval"))
    parser.add_argument("--phantom-studies", type=int, default=10)
    args = parser.parse_args()
    counts = {
        "ddti_val": link_pairs(ddti_pairs(args.data / "ddti", "val"), args.out / "ddti_val"),
        "tg3k_val": link_pairs(tg3k_pairs(args.data / "tg3k", "val"), args.out / "tg3k_val"),
    }
    composed = args.out / "composed_val"
    for sub in ("images", "masks"):
        (composed / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    backgrounds = tg3k_pairs(args.data / "tg3k", "val")
    for image, mask in ddti_pairs(args.data / "ddti", "val"):
        if not read_mask(mask).any():
            continue  # DDTI has a few crops with an empty mask: nothing to paste
        bg_image, bg_mask = backgrounds[int(rng.integers(len(backgrounds)))]
        frame, label = compose_frame(read_grey(bg_image), read_mask(bg_mask), read_grey(image), read_mask(mask), rng)
        write_pair(composed, image.stem, frame, label)
    counts["composed_val"] = len(list((composed / "images").iterdir()))
    phantom = args.out / "phantom"
    if not (phantom / "views.csv").is_file():
        subprocess.run([sys.executable, "-m", "llnm", "phantom", "--out", str(phantom), "--studies",
                        str(args.phantom_studies), "--seed", "11"], check=True, stdout=subprocess.DEVNULL)
    for kind in ("nodule", "gland"):
        out = args.out / f"phantom_{kind}"
        for sub in ("images", "masks"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        with open(phantom / "views.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                write_pair(out, row["sop_instance_uid"], read_grey(phantom / row["image"]),
                           read_mask(phantom / row[f"{kind}_mask"]))
        counts[f"phantom_{kind}"] = len(list((out / "images").iterdir()))
    print(counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
