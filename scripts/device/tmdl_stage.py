"""TMDL on the fusion benchmark on a lent GPU machine (issue 15: the paper preset beside the compact
one). Run THERE through `sh scripts/device/tmdl_stage.sh`, after `pack_tmdl.py` ran HERE
(scripts/device/README.md).

1. Writes the benchmark (`llnm phantom --profile fusion --layout-only`, the seeds of the model card's
   tables: training seed 1, selection seed 5, held-out seed 2) on the machine's cores; a set already
   there from an earlier call on the same machine is kept.
2. Loads the packed report encoder onto the GPU and checks that it holds every token of every report.
3. For each preset: `llnm.model.train.train` on the GPU (bfloat16 autocast) with the 150-token
   reference flags, early stopping on the selection set, a time budget; then
   `llnm.model.evaluate.evaluate` on the held-out set, the structured baseline fitted on the same
   training set beside it (paired bootstrap), the text-only and image-only ablations.
4. Leaves under $OUT one JSON per preset (model.json, the training log, metrics.json, predictions) and
   stage.log: what the device tool brings back (at most 8 files).

Both presets read the same packed encoder (int8 weights: `text_encoder.py`), so the compact run is the
control that says what the encoder and the GPU changed against the compact reference trained here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SEEDS = {"train": 1, "select": 5, "test": 2}  # the model card's fusion tables
LR = {"paper": 1e-4}  # a 144 M-parameter transformer from scratch; the other presets: --lr


def log(out: Path, message: str, **fields) -> None:
    line = json.dumps({"t": round(time.time() - START, 1), "message": message, **fields})
    print(line, flush=True)
    with open(out / "stage.log", "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def write_sets(work: Path, counts: dict[str, int], jobs: int, out: Path) -> dict[str, Path]:
    folders = {}
    for name, seed in SEEDS.items():
        studies = counts[name]
        folder = work / f"{name}-seed{seed}-{studies}"
        record = folder / "generator.json"  # written last by `llnm phantom`
        if not (record.is_file() and json.loads(record.read_text()).get("studies") == studies):
            subprocess.run([sys.executable, "-m", "llnm", "phantom", "--profile", "fusion", "--seed", str(seed),
                            "--studies", str(studies), "--out", str(folder), "--layout-only", "--jobs", str(jobs)],
                           check=True, stdout=subprocess.DEVNULL)
        log(out, "set ready", set=name, folder=str(folder), studies=studies)
        folders[name] = folder
    return folders


def run_preset(name: str, args: argparse.Namespace, folders: dict[str, Path], encode_text) -> None:
    from llnm.model.config import preset
    from llnm.model.evaluate import evaluate
    from llnm.model.train import train

    lr = LR.get(name, args.lr)
    model_dir, eval_dir = args.work / f"model-{name}", args.work / f"eval-{name}"
    log(args.out, "training", preset=name, lr=lr)
    meta = train(folders["train"], model_dir, preset(name, text_tokens=150), encode_text=encode_text,
                 epochs=args.epochs, batch_size=args.batch_size, lr=lr, patience=args.patience, jitters=1,
                 seed=0, threads=args.jobs, progress=False, val_dir=folders["select"], group_dropout=0.2,
                 workers=args.jobs, device=args.device, max_minutes=args.minutes,
                 command=f"scripts/device/tmdl_stage.py {name} lr {lr}")
    log(args.out, "trained", preset=name, select_auc=meta["val_auc"], epoch=meta["best_epoch"],
        epochs_run=meta["epochs_run"], seconds=meta["seconds"])
    report = evaluate(model_dir, folders["test"], eval_dir, encode_text=encode_text, bootstrap=1000,
                      progress=False, examples=0, atlas_studies=0, baseline_train=folders["train"],
                      device=args.device, workers=args.jobs)
    baseline = report["baseline"]
    log(args.out, "evaluated", preset=name, auc=report["metrics"]["auc"], ci=report["ci95"]["auc"],
        bayes=report["bayes_auc"], baseline=baseline.get("baseline_auc"),
        difference=[baseline.get(k) for k in ("difference", "ci_low", "ci_high")],
        ablations=report["ablations"])
    result = {"model": meta,
              "train_log": [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()],
              "metrics": report,
              "predictions": json.loads((eval_dir / "predictions.json").read_text())}
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.5, help="training budget of each preset")
    parser.add_argument("--presets", nargs="+", default=["paper", "compact"])
    parser.add_argument("--train-studies", type=int, default=3000)
    parser.add_argument("--select-studies", type=int, default=120)
    parser.add_argument("--test-studies", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="presets without their own in LR")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--work", type=Path, default=Path("/tmp/llnm-tmdl"))
    parser.add_argument("--pack", type=Path, default=REPO / ".device" / "tmdl")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/llnm-device-out")))
    args = parser.parse_args()
    multiprocessing.set_start_method("forkserver")  # feature workers never inherit a CUDA context

    import torch

    sys.path.insert(0, str(HERE))
    from text_encoder import TextEncoder, TorchTextBackend, check_coverage, unpack

    from llnm.model.data import read_layout
    from llnm.text.encoder import encode_reports
    from llnm.text.tokenize import ReportTokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log(args.out, "start", torch=torch.__version__, cuda=torch.cuda.is_available(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, args=vars(args) | {
            "work": str(args.work), "pack": str(args.pack), "out": str(args.out)})
    folders = write_sets(args.work, {"train": args.train_studies, "select": args.select_studies,
                                     "test": args.test_studies}, args.jobs, args.out)

    state, config, keep_ids = unpack(args.pack / "encoder.npz")
    tokenizer = ReportTokenizer(args.pack / "tokenizer.json")
    texts = [s.report for folder in folders.values() for s in read_layout(folder)]
    missing = check_coverage(tokenizer(texts, windows=4)["input_ids"], keep_ids)
    if missing:
        log(args.out, "reports hold tokens the packed encoder lacks: pack again with these sets", ids=missing[:50])
        return 3
    backend = TorchTextBackend(TextEncoder(state, config), args.device)

    def encode_text(batch: list[str], tokens: int = 50):
        return encode_reports(backend, tokenizer, batch, tokens)

    for name in args.presets:
        try:
            run_preset(name, args, folders, encode_text)
        except Exception as exc:  # the next preset still runs; what failed comes back in stage.log
            log(args.out, "failed", preset=name, error=f"{type(exc).__name__}: {exc}")
    log(args.out, "done")
    return 0


START = time.time()

if __name__ == "__main__":
    sys.exit(main())
