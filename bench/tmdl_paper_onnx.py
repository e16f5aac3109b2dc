"""TMDL `paper` preset through ONNX Runtime against the re-created published architecture (ONNX Runtime
and PyTorch eager), side by side in one process: latency per 2-view study on CPU.

    nice -n 5 .venv/bin/python bench/tmdl_paper_onnx.py --runs 3 --threads 2

Every model is exported to ONNX in a temp folder (random weights: latency does not depend on them):
- published: `PublishedTMDL` of bench/tmdl_paper_vs_published.py (1 image stream, 197 + 54 tokens,
  143 M parameters), the baseline; also timed in PyTorch eager, as benchmark 3 ran it;
- paper_fused: llnm.model.tmdl.TMDL at preset("paper") without rollout (logit + risk only: what the
  occluded rows need);
- paper_rollout: the product's export (llnm.model.export.export_tmdl: TMDLForExport, attention
  rollout in the graph, checked against PyTorch), what the runtime runs today;
- with `--closest`: the paper preset at image_size 128 (246 tokens), fused and with rollout;
- with `--presets compact` (or `paper,compact`): the shipped compact size instead of / besides paper.
Per study = 2 views. Rows timed: batch 2 (one pass per view, as the published model runs), and the
runtime's 2 views x 5 occlusion rows in two ways: all 10 rows through the rollout graph (today), or
the 2 un-occluded rows through the rollout graph + the 8 occluded rows through the fused graph
(rollout only where the heat map reads it). ONNX Runtime graph optimisation: ORT_ENABLE_ALL (the
product's setting) and ORT_ENABLE_BASIC; with `--fusion` also onnxruntime.transformers' optimizer
(attention / layer-norm / GELU fusion, model_type "vit") on the paper fused graph. The text encoder
is not part of either graph (the product encodes the report once per study, shared by both views and
all rows). The functions are called in turn in every run. Prints one JSON object of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tmdl_paper_vs_published import PublishedTMDL  # noqa: E402

from llnm.model.config import preset  # noqa: E402
from llnm.model.export import export_tmdl  # noqa: E402
from llnm.model.tmdl import TMDL, count_parameters, dummy_inputs  # noqa: E402

TMDL_INPUTS = ("images", "text_states", "text_mask", "clinical", "group_keep")


class Fused(nn.Module):
    """TMDL without rollout: logit and risk only (scaled_dot_product_attention in the graph)."""

    def __init__(self, model: TMDL) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, text_states, text_mask, clinical, group_keep):
        logit, risk, _, _ = self.model(images, text_states, text_mask, clinical, group_keep)
        return logit[:, None], risk.softmax(dim=-1)


def export(module: nn.Module, args: tuple, names: list[str], outputs: list[str], path: Path) -> float:
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs, dynamic_axes={n: {0: "batch"} for n in names + outputs})
    return round(time.perf_counter() - start, 1)


def session(path: Path, threads: int, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def feed(config, batch: int) -> dict[str, np.ndarray]:
    inputs = dummy_inputs(config, batch=batch, seed=2)
    keeps = np.vstack([np.ones(4, np.float32), 1.0 - np.eye(4, dtype=np.float32)])
    if batch % 5 == 0:
        inputs["group_keep"] = torch.from_numpy(np.tile(keeps, (batch // 5, 1)))
    return {k: v.numpy() for k, v in inputs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--closest", action="store_true", help="also the paper preset at image_size 128")
    parser.add_argument("--fusion", action="store_true", help="also onnxruntime.transformers' optimizer")
    parser.add_argument("--no-eager", action="store_true", help="skip the PyTorch eager baseline")
    parser.add_argument("--presets", default="paper",
                        help="comma-separated TMDL presets to time (compact: the shipped size, for the rollout rows)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                 "load_average_1m_before": round(os.getloadavg()[0], 2)},
                     "threads": args.threads, "views_per_study": 2, "export_s": {}}
    fns: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        published = PublishedTMDL().eval()
        results["published_params_m"] = round(count_parameters(published) / 1e6, 1)
        image, report, clinical = torch.rand(2, 3, 224, 224), torch.randn(2, 50, 768), torch.randn(2, 4)
        results["export_s"]["published"] = export(published, (image, report, clinical),
                                                  ["image", "report", "clinical"], ["logit"],
                                                  tmp / "published.onnx")
        pub_feed = {"image": image.numpy(), "report": report.numpy(), "clinical": clinical.numpy()}
        pub = session(tmp / "published.onnx", args.threads, "all")
        fns["published_ort_batch_2"] = lambda: pub.run(None, pub_feed)
        if not args.no_eager:
            def eager():
                with torch.inference_mode():
                    published(image, report, clinical)
            fns["published_eager_batch_2"] = eager

        configs = {name: preset(name) for name in args.presets.split(",") if name}
        if args.closest:
            configs["paper_image128"] = preset("paper", image_size=128)
        for name, config in configs.items():
            model = TMDL(config).eval()
            results[f"{name}_params_m"] = round(count_parameters(model) / 1e6, 1)
            results[f"{name}_tokens"] = config.image_tokens + config.text_side_tokens
            sample = dummy_inputs(config, batch=2, seed=1)
            results["export_s"][f"{name}_fused"] = export(
                Fused(model), tuple(sample[k] for k in TMDL_INPUTS), list(TMDL_INPUTS),
                ["logit", "risk_probabilities"], tmp / f"{name}_fused.onnx")
            start = time.perf_counter()
            diffs = export_tmdl(model, tmp / f"{name}_rollout.onnx")
            results["export_s"][f"{name}_rollout"] = round(time.perf_counter() - start, 1)
            results[f"{name}_rollout_export_max_abs_diff"] = diffs
            del model
            f2, f10 = feed(config, 2), feed(config, 10)
            occluded = {k: v[[r for r in range(10) if r % 5]] for k, v in f10.items()}
            unoccluded = {k: v[[0, 5]] for k, v in f10.items()}
            fused = session(tmp / f"{name}_fused.onnx", args.threads, "all")
            rollout = session(tmp / f"{name}_rollout.onnx", args.threads, "all")
            fns[f"{name}_fused_ort_batch_2"] = lambda s=fused, f=f2: s.run(None, f)
            fns[f"{name}_rollout_ort_batch_10"] = lambda s=rollout, f=f10: s.run(None, f)
            fns[f"{name}_rollout_2_plus_fused_8"] = (
                lambda r=rollout, s=fused, u=unoccluded, o=occluded: (r.run(None, u), s.run(None, o)))
            if name == "paper":
                basic = session(tmp / f"{name}_fused.onnx", args.threads, "basic")
                fns["paper_fused_ort_basic_batch_2"] = lambda s=basic, f=f2: s.run(None, f)
                fns["paper_rollout_ort_batch_2"] = lambda s=rollout, f=f2: s.run(None, f)
                if args.fusion:
                    try:
                        from onnxruntime.transformers.optimizer import optimize_model

                        opt = optimize_model(str(tmp / f"{name}_fused.onnx"), model_type="vit", num_heads=12,
                                             hidden_size=768, opt_level=1)
                        results["fusion_ops"] = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
                        opt.save_model_to_file(str(tmp / f"{name}_fused_opt.onnx"))
                        fusion = session(tmp / f"{name}_fused_opt.onnx", args.threads, "all")
                        fns["paper_fused_ort_transformers_fusion_batch_2"] = lambda s=fusion, f=f2: s.run(None, f)
                    except Exception as exc:  # report, keep the rest of the run
                        results["fusion_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.runs):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    ms = {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}
    results["per_study_ms"] = ms
    base = ms["published_ort_batch_2"]
    results["over_published_ort"] = {k: round(v / base, 2) for k, v in ms.items()}
    if "published_eager_batch_2" in ms:
        results["over_published_eager"] = {k: round(v / ms["published_eager_batch_2"], 2) for k, v in ms.items()}
    results["runs"] = args.runs
    results["machine"]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
