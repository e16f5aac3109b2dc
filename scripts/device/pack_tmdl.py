"""Pack a TMDL training stage on the fusion benchmark for a lent GPU machine (issue 15: the paper
preset): run HERE, then once THERE `sh scripts/device/tmdl_stage.sh` (scripts/device/README.md).

The benchmark itself does not travel: the phantom is a function of its seeds, so the GPU machine
writes the same studies (`llnm phantom --layout-only`, on its 16 cores). What that machine lacks is
the report encoder (exported here at set-up, 88 MB, more than the 18 MiB left beside the tracked
tree) and pydicom (the phantom's UIDs). So this writes `.device/tmdl/` (ignored through
.git/info/exclude):
- `encoder.npz`: all-MiniLM-L6-v2 with int8 linear weights and only the word-embedding rows that the
  reports of `--sets` use (`text_encoder.pack`), about 11 MB; `tokenizer.json`;
- `whl/`: the pydicom wheel from this machine's package index;
- `manifest.json`: the kept token ids' count, the sets they were read from, and what the int8
  weights change: the token states of `--check` reports against the ONNX encoder the runtime uses.

`--sets` are the benchmark's folders written HERE with the seeds the stage will use (the default
stage: `llnm phantom --profile fusion --seed 1 --studies 3000`, `--seed 5 --studies 120`, `--seed 2
--studies 1000`), so every token of every report is kept; the stage checks that again there and
stops before training if a report holds a token the table lacks.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from travel import download_wheels, exclude_pack, fits, folder_bytes  # noqa: E402
from text_encoder import TextEncoder, TorchTextBackend, pack, unpack  # noqa: E402

from llnm.config import REPO_ROOT  # noqa: E402
from llnm.text.encoder import encode_reports, tokenizer_path  # noqa: E402
from llnm.text.tokenize import MAX_TOKENS, ReportTokenizer  # noqa: E402

PACK = REPO_ROOT / ".device" / "tmdl"
WINDOWS = 4  # the most report windows any preset reads (200 tokens)
ALWAYS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"0123456789.,;:()-/%+=<>x", *[f"##{c}" for c in "0123456789.x"]]


def reports(folder: Path) -> list[str]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as fh:
        return [row["report"] for row in csv.DictReader(fh)]


def token_ids(tokenizer: ReportTokenizer, texts: list[str]) -> np.ndarray:
    ids = tokenizer(texts, windows=WINDOWS)["input_ids"]
    return np.unique(ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=Path, nargs="+", required=True,
                        help="the benchmark's layout folders, written here with the stage's seeds")
    parser.add_argument("--check", type=int, default=300, help="reports whose token states are compared")
    parser.add_argument("--out", type=Path, default=PACK, help="the pack folder (default: %(default)s)")
    args = parser.parse_args()
    pack_dir = args.out

    from safetensors.numpy import load_file

    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.text.export import default_source

    repo = REPO_ROOT / "model_repository"
    tokenizer = ReportTokenizer(tokenizer_path(repo))
    texts = [t for folder in args.sets for t in reports(folder)]
    vocab = json.loads(tokenizer_path(repo).read_text())["model"]["vocab"]
    keep = np.union1d(token_ids(tokenizer, texts), [vocab[t] for t in ALWAYS if t in vocab])

    exclude_pack()
    shutil.rmtree(pack_dir, ignore_errors=True)
    pack_dir.mkdir(parents=True)
    source = default_source()
    config = json.loads((source / "config.json").read_text())
    pack(load_file(str(source / "model.safetensors")), config, keep, pack_dir / "encoder.npz")
    shutil.copyfile(tokenizer_path(repo), pack_dir / "tokenizer.json")
    download_wheels(("pydicom",), pack_dir / "whl")

    sample = texts[:: max(1, len(texts) // args.check)][: args.check]
    tokens = 3 * MAX_TOKENS
    onnx_states, mask = encode_reports(OnnxRuntimeBackend(repo, threads=2), tokenizer, sample, tokens)
    state, cfg, _ = unpack(pack_dir / "encoder.npz")
    packed_states, _ = encode_reports(TorchTextBackend(TextEncoder(state, cfg)), tokenizer, sample, tokens)
    real = mask > 0
    a, b = onnx_states[real], packed_states[real]
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    deviation = {"reports": len(sample), "tokens": int(real.sum()),
                 "max_abs_difference": float(np.abs(a - b).max()),
                 "relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
                 "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean())}
    manifest = {"kept_token_ids": int(len(keep)), "vocabulary": config["vocab_size"],
                "sets": [str(s) for s in args.sets], "reports": len(texts),
                "int8_against_onnx": deviation}
    (pack_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    small_enough = fits({"tmdl": folder_bytes(pack_dir)}, [".device/tmdl"], manifest)
    if deviation["cosine_min"] < 0.99:
        print("the int8 encoder strays too far from the runtime's", file=sys.stderr)
        return 1
    if not small_enough:
        print("too large to travel", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
