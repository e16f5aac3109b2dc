"""Provenance of what Triton serves (llnm.inference.provenance, `llnm model-hashes`): every config.pbtxt of
model_repository/ declares the sha256 of its model file, and carries the serving settings NVIDIA
recommends (warm-up, ONNX Runtime memory caps). A model file replaced without `llnm model-hashes --write`
fails here, before a worker would refuse Triton's copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llnm.cli import main
from llnm.config import REPO_ROOT
from llnm.inference import provenance

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
SHIPPED = provenance.repository_models(MODEL_REPOSITORY)


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_the_repository_ships_the_four_models():
    assert SHIPPED == ["nodule_seg", "text_encoder", "thyroid_seg", "tmdl"]


@pytest.mark.parametrize("model", SHIPPED)
def test_each_config_declares_the_sha256_of_its_model_file(model):
    item, = provenance.check_repository(MODEL_REPOSITORY, [model])
    assert item.ok, (f"model_repository/{model}/config.pbtxt declares llnm_sha256 {item.declared} but "
                     f"1/model.onnx is {item.actual}: run `llnm model-hashes --write`")
    parsed = _config(provenance.config_file(MODEL_REPOSITORY, model))  # Triton reads the same value
    assert parsed.parameters[provenance.PARAMETER].string_value == item.actual


@pytest.mark.parametrize("model", SHIPPED)
def test_each_config_warms_up_and_caps_onnx_runtime_memory(model):
    config = _config(provenance.config_file(MODEL_REPOSITORY, model))
    inputs = {i.name: list(i.dims) for i in config.input}
    assert {w.batch_size for w in config.model_warmup} == {1, config.max_batch_size}
    for warmup in config.model_warmup:  # every input, at the config's shape (Triton refuses a mismatch)
        assert {k: list(v.dims) for k, v in warmup.inputs.items()} == inputs
        assert all(v.zero_data for v in warmup.inputs.values())  # zeros: valid token ids too
    # top-level parameters: with any parameter present, Triton's onnxruntime backend reads these two from here
    assert int(config.parameters["gpu_mem_limit"].string_value) <= 2 << 30
    assert config.parameters["arena_extend_strategy"].string_value == "1"  # kSameAsRequested


def test_write_declares_replaces_and_leaves_matching_configs_alone(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY / "thyroid_seg", repo / "thyroid_seg",
                    ignore=lambda d, names: [n for n in names if n == "model.onnx"])
    shutil.copytree(MODEL_REPOSITORY / "tmdl", repo / "tmdl",
                    ignore=lambda d, names: [n for n in names if n == "model.onnx"])
    for model in ("thyroid_seg", "tmdl"):
        (repo / model / "1" / "model.onnx").write_bytes(model.encode())
    config = repo / "thyroid_seg" / "config.pbtxt"
    untouched = (repo / "tmdl" / "config.pbtxt")
    untouched.write_text(provenance.with_declaration(untouched.read_text(), provenance.file_sha256(
        repo / "tmdl" / "1" / "model.onnx")))
    mtime = untouched.stat().st_mtime_ns
    before = config.read_text()

    assert [i.ok for i in provenance.check_repository(repo)] == [False, True]
    provenance.write_repository(repo)
    assert all(i.ok for i in provenance.check_repository(repo))
    after = config.read_text()
    assert after.count(provenance.PARAMETER) == before.count(provenance.PARAMETER)  # replaced in place
    assert after.replace(provenance.declared_in_text(after), "") == \
        before.replace(provenance.declared_in_text(before), "")  # nothing else changed, comments kept
    assert untouched.stat().st_mtime_ns == mtime


def test_a_config_without_a_declaration_gets_one_appended():
    text = 'name: "m"\nmax_batch_size: 1\n'
    declared = provenance.with_declaration(text, "ab" * 32)
    assert declared.startswith(text) and provenance.declared_in_text(declared) == "ab" * 32
    assert provenance.declared_in_text(provenance.with_declaration(declared, "cd" * 32)) == "cd" * 32
    assert provenance.declared_in_config({"config": {"parameters": {"llnm_sha256": {"string_value": "ef"}}}}) == "ef"
    assert provenance.declared_in_config({"parameters": {}}) is None


def test_a_replaced_model_file_is_one_command_away_from_declared(tmp_path, capsys):
    """What the lead does after retraining the gland model: the check fails, --write fixes it."""
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY / "thyroid_seg", repo / "thyroid_seg",
                    ignore=lambda d, names: [n for n in names if n == "model.onnx"])
    (repo / "thyroid_seg" / "1" / "model.onnx").write_bytes(b"a retrained gland model")
    args = ["model-hashes", "--model-repository", str(repo)]
    assert main(args) == 1
    assert "STALE" in capsys.readouterr().out
    assert main([*args, "--write"]) == 0
    assert main(args) == 0
    assert main([*args, "no_such_model"]) == 2
    assert main(["model-hashes", "--model-repository", str(tmp_path / "empty")]) == 2


def test_a_worker_expects_its_own_file_then_its_own_declaration(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text(provenance.with_declaration('name: "m"\n', "12" * 32))
    assert provenance.expected_sha256(repo, "m") == ("12" * 32, str(repo / "m" / "config.pbtxt"))
    (repo / "m" / "1" / "model.onnx").write_bytes(b"x")
    assert provenance.expected_sha256(repo, "m")[0] == provenance.file_sha256(repo / "m" / "1" / "model.onnx")
    assert provenance.expected_sha256(repo, "other")[0] is None
    assert provenance.expected_sha256(None, "m")[0] is None
