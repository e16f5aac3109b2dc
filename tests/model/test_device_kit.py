"""The kit that takes TMDL's fusion benchmark to a lent GPU machine (scripts/device: pack_tmdl.py HERE,
tmdl_stage.sh THERE). No GPU is needed to check it: the encoder that travels is compared with the
runtime's, and the whole stage runs here on the CPU with the tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llnm.config import REPO_ROOT
from llnm.model.data import read_layout
from llnm.phantom import write_phantom_set
from llnm.text.encoder import encode_reports, tokenizer_path
from llnm.text.tokenize import ReportTokenizer

KIT = REPO_ROOT / "scripts" / "device"
sys.path.insert(0, str(KIT))

from text_encoder import (TextEncoder, TorchTextBackend, check_coverage, dequantise, pack, quantise,  # noqa: E402
                          unpack)

REPORTS = ["Impression: suspicious nodule.\nSolid hypoechoic nodule, 14 x 9 mm, irregular margin, punctate "
           "echogenic foci. TI-RADS 5.", "Cystic nodule.", ""]


@pytest.fixture(scope="module")
def runtime():
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
    from llnm.model.train import onnx_text_encoder

    repo = REPO_ROOT / "model_repository"
    onnx_text_encoder(repo)  # exported at set-up; exported here if missing
    return OnnxRuntimeBackend(repo, threads=1), ReportTokenizer(tokenizer_path(repo))


@pytest.fixture(scope="module")
def weights():
    from safetensors.numpy import load_file

    from llnm.text.export import default_source

    source = default_source()
    return load_file(str(source / "model.safetensors")), json.loads((source / "config.json").read_text())


def test_the_travelling_encoder_is_the_runtime_encoder(runtime, weights):
    """BERT's forward in plain torch, with the package's float32 weights, gives the ONNX graph's token
    states (the graph the runtime and the CPU training read)."""
    import torch

    backend, tokenizer = runtime
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in weights[0].items() if k.startswith(("embeddings.", "encoder."))
             and k != "embeddings.position_ids"}
    expected, mask = encode_reports(backend, tokenizer, REPORTS, 150)
    got, got_mask = encode_reports(TorchTextBackend(TextEncoder(state, weights[1])), tokenizer, REPORTS, 150)
    np.testing.assert_array_equal(mask, got_mask)
    assert np.abs(got - expected).max() < 1e-4
    assert not got[2].any()  # no report: no states


def test_the_packed_encoder_keeps_its_tokens_close_and_names_the_tokens_it_lacks(runtime, weights, tmp_path):
    backend, tokenizer = runtime
    ids = tokenizer(REPORTS[:2], windows=4)["input_ids"]
    pack(weights[0], weights[1], np.unique(ids), tmp_path / "encoder.npz")
    assert (tmp_path / "encoder.npz").stat().st_size < 12e6  # what travels beside the tracked tree
    state, config, keep = unpack(tmp_path / "encoder.npz")
    expected, mask = encode_reports(backend, tokenizer, REPORTS[:2], 150)
    got, _ = encode_reports(TorchTextBackend(TextEncoder(state, config)), tokenizer, REPORTS[:2], 150)
    real = mask > 0
    a, b = expected[real], got[real]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.03
    assert ((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min() > 0.99
    assert check_coverage(ids, keep) == []
    other = tokenizer(["Thyroglossal duct remnant."])["input_ids"]
    lacking = check_coverage(other, keep)
    assert lacking and set(lacking) <= set(np.unique(other).tolist()) - set(keep.tolist())


def test_int8_scales_per_column_group_keep_an_outlier_from_coarsening_its_whole_row():
    """One large weight in a row sets that row's scale; with a scale per group of 64 columns only
    its own group is quantised coarsely, so the rest of the row keeps int8's full resolution."""
    w = np.random.default_rng(0).normal(0, 0.02, size=(8, 256)).astype(np.float32)
    w[:, 3] = 1.0
    q, scale = quantise(w, group=64)
    assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (8, 4)
    grouped = np.abs(dequantise(q, scale) - w)[:, 64:].max()
    q_row, scale_row = quantise(w, group=256)
    whole_row = np.abs(dequantise(q_row, scale_row) - w)[:, 64:].max()
    assert grouped < whole_row / 10 and grouped <= scale[:, 1:].max() / 2 + 1e-7
    with pytest.raises(ValueError, match="multiple"):
        quantise(w[:, :100], group=64)


@pytest.mark.slow
def test_the_gpu_stage_runs_end_to_end_here_on_the_cpu(tmp_path):
    """Pack, then the stage as the GPU machine runs it (`--device cpu`, the tiny preset, a few studies):
    the benchmark's sets reused, the coverage checked, the model trained and scored beside the baseline,
    one JSON and the log under OUT."""
    work, out, pack_dir = tmp_path / "work", tmp_path / "out", tmp_path / "pack"
    sets = {"train-seed1-12": (1, 12), "select-seed5-8": (5, 8), "test-seed2-10": (2, 10)}
    for name, (seed, studies) in sets.items():
        write_phantom_set(work / name, studies, seed, profile="fusion", dicom=False)
        (work / name / "generator.json").write_text(json.dumps({"studies": studies}))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "services"), "OUT": str(out)}
    subprocess.run([sys.executable, str(KIT / "pack_tmdl.py"), "--out", str(pack_dir), "--check", "10",
                    "--sets", *[str(work / n) for n in sets]], check=True, env=env, capture_output=True)
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    assert manifest["int8_against_onnx"]["cosine_min"] > 0.99 and list((pack_dir / "whl").glob("pydicom-*.whl"))
    subprocess.run([sys.executable, str(KIT / "tmdl_stage.py"), "--work", str(work), "--pack", str(pack_dir),
                    "--device", "cpu", "--presets", "tiny", "--train-studies", "12", "--select-studies", "8",
                    "--test-studies", "10", "--epochs", "2", "--jobs", "2", "--minutes", "1"],
                   check=True, env=env, capture_output=True)
    log = [json.loads(line) for line in (out / "stage.log").read_text().splitlines()]
    assert [e["message"] for e in log][-1] == "done" and not any(e["message"] == "failed" for e in log)
    result = json.loads((out / "tiny.json").read_text())
    assert result["model"]["device"] == "cpu" and result["model"]["val_data"].endswith("select-seed5-8")
    assert len(result["predictions"]) == len(read_layout(work / "test-seed2-10"))
    assert {"difference", "ci_low", "ci_high"} <= result["metrics"]["baseline"].keys()
    assert set(result["metrics"]["ablations"]) == {"report_only", "image_only", "without_report"}
