"""The report text encoder: ONNX Runtime (the exported file the runtime uses) against the same BERT in
PyTorch eager (transformers), in the same process, on the same tokenised reports, batch 1 and batched.

    .venv/bin/python bench/text_encoder_latency.py --runs 50 --threads 1

The calls alternate (ONNX, eager, ONNX, ...) so a noisy moment hits both. Reports are phantom-style
findings + impression text tokenised by the runtime's own tokenizer (llnm.text.tokenize: padded to
its MAX_TOKENS). Needs the `train` extra (torch, transformers) and the exported encoder
(`model_repository/text_encoder/1/`, written by scripts/setup.sh). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np
from timing import alternating

REPO = Path(__file__).resolve().parents[1]
REPORTS = [
    "Findings: solid hypoechoic nodule in the right lobe, irregular margin, microcalcifications, taller than wide. "
    "Impression: TI-RADS 5, suspicious for papillary carcinoma.",
    "Findings: mixed cystic and solid nodule, smooth margin, no calcification. Impression: TI-RADS 3.",
    "Findings: isoechoic nodule with a halo, left lobe, 12 mm. Impression: probably benign, TI-RADS 3.",
    "Findings: markedly hypoechoic nodule abutting the capsule, punctate echogenic foci. Impression: TI-RADS 5.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads = torch threads")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--model-repository", type=Path, default=REPO / "model_repository")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import onnxruntime as ort
    import torch
    from transformers import AutoModel

    from llnm.text.encoder import tokenizer_path
    from llnm.text.export import default_source
    from llnm.text.tokenize import ReportTokenizer

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    onnx_path = args.model_repository / "text_encoder" / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    bert = AutoModel.from_pretrained(str(default_source()), local_files_only=True).eval()
    tokenizer = ReportTokenizer(tokenizer_path(args.model_repository))
    load_before = os.getloadavg()[0]
    result: dict = {"machine": {"cpu": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                                "load_average_1m_before": round(load_before, 2)}, "runs": args.runs}
    for batch in args.batches:
        feed = tokenizer([REPORTS[i % len(REPORTS)] for i in range(batch)])
        names = [i.name for i in session.get_inputs()]
        ort_feed = {name: feed[name] for name in names}
        ids, mask = torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])

        def run_onnx():
            session.run(None, ort_feed)

        def run_eager():
            with torch.inference_mode():
                bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))

        onnx_ms, eager_ms = alternating([run_onnx, run_eager], args.runs, args.warmup)
        med_onnx, med_eager = statistics.median(onnx_ms), statistics.median(eager_ms)
        result[f"batch_{batch}"] = {"tokens": int(feed["input_ids"].shape[1]), "onnx_ms": round(med_onnx, 2),
                                    "eager_ms": round(med_eager, 2), "eager_over_onnx": round(med_eager / med_onnx, 2),
                                    "onnx_p90_ms": round(float(np.percentile(onnx_ms, 90)), 2),
                                    "eager_p90_ms": round(float(np.percentile(eager_ms, 90)), 2)}
    result["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
