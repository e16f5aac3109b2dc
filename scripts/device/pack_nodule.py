"""Pack a nodule training stage for a lent GPU machine (the `device` tool): run HERE, then once THERE
`sh scripts/device/nodule_stage.sh` (scripts/device/README.md says how).

What travels to that machine is the working tree (tracked files and untracked files git does not
ignore) plus the ignored paths a call names in `carry`, 64 MiB in all. The data (../shared) does not
travel, the tracked tree already holds about 46 MB (the shipped models), and the machine has PyTorch but
no Ultralytics. So this writes, into `.device/` (ignored through .git/info/exclude):
- `.device/nodule.tar.gz`: the training set `llnm train-seg --model nodule` would build (`build_dataset`:
  the train-case whole frames twice, regraded and blurred as asked, the DDTI crops, composed frames,
  phantom frames; the select-case frames as the validation set), each image shrunk to at most
  `--imgsz` on its longer side (Ultralytics shrinks it so anyway) and stored as JPEG; the labels are
  normalised polygons, the same at any size (`llnm train-seg --dataset` trains on it);
- `.device/whl/`: the pure-Python wheels that machine lacks (Ultralytics and its two small helpers),
  from this machine's package index;
- `.device/stubs/polars/`: a stand-in for polars (a 40 MB wheel) that Ultralytics imports only to read
  its own results.csv back, inside a try.
It prints the sizes and refuses when the tree and the pack would not fit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from travel import download_wheels, exclude_pack, fits, folder_bytes  # noqa: E402

from llnm.config import REPO_ROOT  # noqa: E402
from llnm.segmentation.train_nodule import NoduleTrainConfig, build_dataset  # noqa: E402

PACK = REPO_ROOT / ".device"
WHEELS = ("ultralytics", "ultralytics-thop", "ultralytics-platform")
POLARS_STUB = '''"""Stand-in for polars on the GPU machine (scripts/device/pack_nodule.py): Ultralytics imports it only
to read its results.csv back into a checkpoint, inside `try ... except Exception`."""


def __getattr__(name):
    raise ImportError(f"polars.{name}: polars is not installed on this machine")
'''


def shrink_copy(source: Path, target: Path, imgsz: int, quality: int) -> None:
    """images/ as JPEG of at most imgsz on the longer side, labels/ as they are."""
    for split in ("train", "val"):
        (target / "images" / split).mkdir(parents=True, exist_ok=True)
        (target / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image in sorted((source / "images" / split).iterdir()):
            picture = Image.open(image).convert("L")
            picture.thumbnail((imgsz, imgsz), Image.Resampling.LANCZOS)
            picture.save(target / "images" / split / f"{image.stem}.jpg", "JPEG", quality=quality)
        for label in (source / "labels" / split).iterdir():
            shutil.copy2(label, target / "labels" / split / label.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="folder holding tg3k/, ddti/ and ddti_frames/ (default: %(default)s)")
    parser.add_argument("--phantom", type=Path, default=None, help="an `llnm phantom` folder whose frames join the set")
    parser.add_argument("--gamma-augment", type=float, nargs=2, default=(0.7, 1.4), metavar=("LOW", "HIGH"))
    parser.add_argument("--blur-augment", type=float, default=2.0, metavar="SIGMA")
    parser.add_argument("--composed-per-crop", type=float, default=0.5,
                        help="composed frames per DDTI crop (llnm train-seg: 1; fewer, to fit)")
    parser.add_argument("--imgsz", type=int, default=320, help="longest side of the packed images (stage 8 trained at 320)")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the packed images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llnm-device-pack"), help="where the full-size set is built")
    args = parser.parse_args()

    exclude_pack()
    cfg = NoduleTrainConfig(data=args.data, out=args.work, phantom=args.phantom, seed=args.seed,
                            composed_per_crop=args.composed_per_crop, gamma_range=tuple(args.gamma_augment),
                            blur_max=args.blur_augment)
    source = build_dataset(cfg).parent
    target = args.work / "nodule"
    shutil.rmtree(target, ignore_errors=True)
    shrink_copy(source, target, args.imgsz, args.quality)
    (target / "packed.json").write_text(json.dumps({
        "built_from": json.loads((source / "stamp.json").read_text()), "imgsz": args.imgsz, "quality": args.quality,
        "train_images": len(list((target / "images" / "train").iterdir())),
        "val_images": len(list((target / "images" / "val").iterdir()))}, indent=2) + "\n")
    PACK.mkdir(exist_ok=True)
    shutil.rmtree(PACK / "nodule", ignore_errors=True)
    with tarfile.open(PACK / "nodule.tar.gz", "w:gz") as tar:  # the labels' text shrinks to a quarter
        tar.add(target, arcname="nodule")

    wheels = PACK / "whl"
    shutil.rmtree(wheels, ignore_errors=True)
    download_wheels(WHEELS, wheels)
    stub = PACK / "stubs" / "polars"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(POLARS_STUB)

    sizes = {"nodule": (PACK / "nodule.tar.gz").stat().st_size, "whl": folder_bytes(wheels),
             "stubs": folder_bytes(PACK / "stubs")}
    if not fits(sizes, [".device/nodule.tar.gz", ".device/whl", ".device/stubs"]):
        print("too large to travel: lower --imgsz, --quality or --composed-per-crop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
