"""Size and cost of a TMDL preset: parameters and FLOPs of one forward pass (one view)."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from llnm.model.config import TMDLConfig
from llnm.model.tmdl import TMDL, count_parameters, dummy_inputs


def model_info(config: TMDLConfig) -> dict:
    """FLOPs counted by torch's FlopCounterMode (a multiply-add counts 2) on the fused-attention
    forward pass of one sample; the time is one CPU forward pass at the current thread count."""
    model = TMDL(config).eval()
    inputs = dummy_inputs(config, batch=1)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(**inputs)
        start = time.perf_counter()
        model(**inputs)
        seconds = time.perf_counter() - start
    flops = counter.get_total_flops()
    return {"preset": config.name, "parameters": count_parameters(model),
            "parameters_millions": round(count_parameters(model) / 1e6, 2),
            "gflops_per_view": round(flops / 1e9, 2), "tokens": config.image_tokens + config.text_side_tokens,
            "cpu_forward_seconds": round(seconds, 3), "threads": torch.get_num_threads(), "config": asdict(config)}
