"""TMDL `paper` preset against the authors' published architecture re-created at its published sizes,
both PyTorch eager on CPU, side by side in one process: latency per 2-view study.

    nice -n 10 .venv/bin/python bench/tmdl_paper_vs_published.py --runs 3 --threads 2

BASELINE (`PublishedTMDL` below, written for this benchmark only, not product code): the published
IRENE-style model of LLNM-Net as described (one 224 x 224 RGB image stream in 16 x 16 patches plus a
class token = 197 tokens; 50 report tokens of a 768-wide BERT + 4 clinical tokens = 54 text tokens;
hidden 768, 12 heads, 4 bidirectional blocks (self- plus cross-attention per stream, MLP per stream)
then 12 self-attention blocks over the 251 concatenated tokens; class-token head). About 143M
parameters; the script prints the count. Weights are random: latency does not depend on them.

CANDIDATE: llnm.model.tmdl.TMDL at preset("paper") (three 224 x 224 feature images -> 3 x 196 = 588
image tokens + 54 text-side tokens = 642 tokens), with fused attention (no rollout) as in training,
and TMDLForExport (explicit attention + rollout, what the runtime's ONNX graph computes).

Per study means 2 views. The published model runs once per view (batch 2); the runtime also occludes
each of the 4 token groups once per view (batch 10); both are reported. `--closest` adds the paper
preset at image_size 128 (3 x 64 + 54 = 246 tokens, the published token count) to show what gets
closest. Prints one JSON object of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn

from llnm.model.config import preset
from llnm.model.tmdl import TMDL, TMDLForExport, count_parameters, dummy_inputs


class _Block(nn.Module):
    """Pre-norm transformer block; with `other` given, attention is self + cross (IRENE's bidirectional)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend(self, q, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, *kv)

    def merge(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, h, n, dk = attn.shape
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, h * dk))
        return x + self.mlp(self.norm2(x))


class PublishedTMDL(nn.Module):
    """Baseline: the published single-image-stream architecture (see the module docstring)."""

    def __init__(self, d: int = 768, heads: int = 12, bi: int = 4, self_blocks: int = 12, image: int = 224,
                 patch: int = 16, report_tokens: int = 50, clinical: int = 4, text_dim: int = 768) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.image_pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, d))
        self.text_proj = nn.Linear(text_dim, d)
        self.clinical_proj = nn.ModuleList(nn.Linear(1, d) for _ in range(clinical))
        self.text_pos = nn.Parameter(torch.zeros(1, report_tokens + clinical, d))
        self.image_blocks = nn.ModuleList(_Block(d, heads) for _ in range(bi))
        self.text_blocks = nn.ModuleList(_Block(d, heads) for _ in range(bi))
        self.self_blocks = nn.ModuleList(_Block(d, heads) for _ in range(self_blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    def forward(self, image: torch.Tensor, report: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        x_i = torch.cat([self.cls.expand(b, -1, -1), self.patch_embed(image).flatten(2).transpose(1, 2)], 1)
        x_i = x_i + self.image_pos
        scalars = [proj(clinical[:, k:k + 1])[:, None] for k, proj in enumerate(self.clinical_proj)]
        x_t = torch.cat([self.text_proj(report), *scalars], 1) + self.text_pos
        for bi, bt in zip(self.image_blocks, self.text_blocks):
            qi, ki, vi = bi.split(bi.norm1(x_i))
            qt, kt, vt = bt.split(bt.norm1(x_t))
            a_i = bi.attend(qi, (ki, vi)) + bi.attend(qi, (kt, vt))
            a_t = bt.attend(qt, (kt, vt)) + bt.attend(qt, (ki, vi))
            x_i, x_t = bi.merge(x_i, a_i), bt.merge(x_t, a_t)
        x = torch.cat([x_i, x_t], 1)
        for block in self.self_blocks:
            q, k, v = block.split(block.norm1(x))
            x = block.merge(x, block.attend(q, (k, v)))
        return self.head(self.norm(x)[:, 0])[:, 0]


def timed(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": round(statistics.median(times) * 1000, 1), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--closest", action="store_true", help="also the paper preset at image_size 128")
    parser.add_argument("--with-occlusion", action="store_true",
                        help="also the runtime's batch of 10 (2 views x 5 occlusion rows) for the paper preset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "threads": args.threads, "views_per_study": 2}
    published = PublishedTMDL().eval()
    image = torch.rand(2, 3, 224, 224)
    report, clinical = torch.randn(2, 50, 768), torch.randn(2, 4)

    def run_published():
        with torch.inference_mode():
            published(image, report, clinical)

    candidates = {"paper": preset("paper")}
    if args.closest:
        candidates["paper_image128"] = preset("paper", image_size=128)
    models = {name: TMDL(config).eval() for name, config in candidates.items()}

    def forward(model, batch: int, rollout: bool):
        inputs = dummy_inputs(model.config, batch=batch)
        graph = TMDLForExport(model).eval() if rollout else model
        args_ = [inputs[k] for k in ("images", "text_states", "text_mask", "clinical", "group_keep")]

        def run():
            with torch.inference_mode():
                graph(*args_)
        return run

    # interleaved, so slow phases of the shared machine hit baseline and candidates alike
    results["published_baseline"] = {"params_m": round(count_parameters(published) / 1e6, 1), "tokens": 197 + 54,
                                     "per_study_batch_2": timed(run_published, args.runs, args.warmup)}
    for name, model in models.items():
        c = model.config
        entry = {"params_m": round(count_parameters(model) / 1e6, 1), "tokens": c.image_tokens + c.text_side_tokens,
                 "per_study_batch_2_fused": timed(forward(model, 2, False), args.runs, args.warmup),
                 "per_study_batch_2_rollout": timed(forward(model, 2, True), args.runs, args.warmup)}
        if args.with_occlusion:
            entry["per_study_batch_10_rollout"] = timed(forward(model, 10, True), max(1, args.runs - 1), 0)
        base = results["published_baseline"]["per_study_batch_2"]["median_ms"]
        entry["fused_over_published"] = round(entry["per_study_batch_2_fused"]["median_ms"] / base, 2)
        results[name] = entry
    results["published_baseline"]["per_study_batch_2_again"] = timed(run_published, args.runs, 0)
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
