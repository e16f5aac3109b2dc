"""ONNX export of TMDL and the Triton config.pbtxt files of model_repository/ (torch; set-up time).

The exported TMDL graph has inputs images, text_states, text_mask, clinical, group_keep and
outputs probability, risk_probabilities, token_importance (attention rollout over the image tokens,
so the runtime heatmap needs no torch) and logit. Every export is checked against PyTorch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from llnm.inference.backend import TMDL_MAX_BATCH
from llnm.model.config import TMDLConfig
from llnm.model.tmdl import TMDL, TMDLForExport, attention_rollout, dummy_inputs

TMDL_INPUTS = ("images", "text_states", "text_mask", "clinical", "group_keep")
TMDL_OUTPUTS = ("probability", "risk_probabilities", "token_importance", "logit")

_CONFIG_NOTE = """\
# Triton model configuration ({what}); the same ONNX file runs in-process under ONNX Runtime.
# instance_group asks for a GPU; on a CPU-only Triton change `kind: KIND_GPU` to `kind: KIND_CPU`
# (the model runs there too, just slower).
"""


#: The cap of each model's CUDA memory arena in Triton's ONNX Runtime backend (bytes): four models share
#: one GPU, each well under 1 GiB at its largest batch.
ORT_GPU_MEM_LIMIT = 1 << 30


def runtime_pbtxt(inputs: list[tuple[str, str, list[int]]], max_batch: int) -> str:
    """The part of a config.pbtxt NVIDIA recommends for serving, the same for every model: warm-up requests
    (zeros, batch 1 and the largest batch) and ONNX Runtime's memory settings. docs/operations.md
    ("Triton") explains each setting.

    The memory settings are top-level `parameters`, not `gpu_execution_accelerator` ones: once a config
    has any parameter (llnm_sha256 always is one), the backend reads gpu_mem_limit and
    arena_extend_strategy from the top level, and their defaults there (no limit, next power of two) win
    over the accelerator's."""
    def sample(batch: int) -> str:
        tensors = "".join(f'    inputs {{ key: "{n}" value: {{ data_type: {t} dims: [ {", ".join(map(str, d))} ] '
                          f"zero_data: true }} }}\n" for n, t, d in inputs)
        return f'  {{\n    name: "zeros_batch_{batch}" batch_size: {batch}\n{tensors}  }}'

    batches = sorted({1, max_batch})
    return ("# Warm-up: Triton runs these before it marks the model ready (and, with --strict-readiness, before\n"
            "# the server is ready): the first study pays neither session set-up nor CUDA kernel selection.\n"
            + "model_warmup [\n" + ",\n".join(sample(b) for b in batches) + "\n]\n"
            + "# ONNX Runtime memory (Triton's onnxruntime backend): this model's CUDA arena grows by what a\n"
            "# request needs (arena_extend_strategy 1 = kSameAsRequested, not the next power of two) and never\n"
            "# past gpu_mem_limit bytes; the warm-up at the largest batch sizes it once.\n"
            + f'parameters {{ key: "gpu_mem_limit" value: {{ string_value: "{ORT_GPU_MEM_LIMIT}" }} }}\n'
            + 'parameters { key: "arena_extend_strategy" value: { string_value: "1" } }\n')


def _pbtxt(name: str, what: str, inputs: list[tuple[str, str, list[int]]],
           outputs: list[tuple[str, str, list[int]]], max_batch: int) -> str:
    def tensors(items):
        return ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: [ {", ".join(map(str, d))} ] }}'
                          for n, t, d in items)

    return (_CONFIG_NOTE.format(what=what)
            + f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
            + f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
            + "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
            + "instance_group [ { count: 1 kind: KIND_GPU } ]\n"
            + runtime_pbtxt(inputs, max_batch))


def tmdl_pbtxt(config: TMDLConfig, max_batch: int = TMDL_MAX_BATCH) -> str:
    s = config.image_size
    return _pbtxt("tmdl", f"TMDL, preset {config.name}", [
        ("images", "TYPE_FP32", [3, s, s]),
        ("text_states", "TYPE_FP32", [config.text_tokens, config.text_dim]),
        ("text_mask", "TYPE_FP32", [config.text_tokens]),
        ("clinical", "TYPE_FP32", [len(config.clinical_inputs)]),
        ("group_keep", "TYPE_FP32", [4]),
    ], [
        ("probability", "TYPE_FP32", [1]),
        ("risk_probabilities", "TYPE_FP32", [config.risk_levels]),
        ("token_importance", "TYPE_FP32", [config.image_tokens]),
        ("logit", "TYPE_FP32", [1]),
    ], max_batch)


def text_encoder_pbtxt(tokens: int = 50, width: int = 384, max_batch: int = 32) -> str:
    return _pbtxt("text_encoder", "BERT-family report encoder; tokenizer.json beside model.onnx", [
        ("input_ids", "TYPE_INT64", [tokens]),
        ("attention_mask", "TYPE_INT64", [tokens]),
    ], [
        ("token_states", "TYPE_FP32", [tokens, width]),
        ("mask", "TYPE_FP32", [tokens]),
    ], max_batch)


def export_tmdl(model: TMDL, path: Path, opset: int = 17) -> dict[str, float]:
    """Write the ONNX graph; return the largest absolute differences to PyTorch (fused-attention path)."""
    import onnxruntime as ort

    model = model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = dummy_inputs(model.config, batch=3, seed=1)
    inputs["group_keep"][1, 0] = 0.0  # one row with the location group occluded
    inputs["text_mask"][2] = 0.0  # one row without a report
    wrapper = TMDLForExport(model).eval()
    args = tuple(inputs[k] for k in TMDL_INPUTS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: no onnxscript here
        torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(TMDL_INPUTS), output_names=list(TMDL_OUTPUTS),
                          dynamic_axes={n: {0: "batch"} for n in TMDL_INPUTS + TMDL_OUTPUTS})
        logit, risk, attentions, mask = model(*args, return_attention=True)
        fused_logit, fused_risk, _, _ = model(*args)
        importance = attention_rollout(attentions, mask, model.config.image_tokens, model.config.pooling)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(TMDL_OUTPUTS, session.run(list(TMDL_OUTPUTS), {k: v.numpy() for k, v in inputs.items()})))
    return {
        "probability": float(np.abs(got["probability"][:, 0] - torch.sigmoid(fused_logit).numpy()).max()),
        "risk_probabilities": float(np.abs(got["risk_probabilities"] - fused_risk.softmax(-1).numpy()).max()),
        "token_importance": float(np.abs(got["token_importance"] - importance.numpy()).max()),
        "logit": float(np.abs(got["logit"][:, 0] - logit.numpy()).max()),
    }
