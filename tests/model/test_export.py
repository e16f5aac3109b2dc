"""ONNX export of TMDL: parity with PyTorch and a Triton config that names the graph's tensors."""

import onnx
import pytest
import torch

from llnm.model.config import preset
from llnm.model.export import TMDL_INPUTS, TMDL_OUTPUTS, export_tmdl, text_encoder_pbtxt, tmdl_pbtxt
from llnm.model.tmdl import TMDL


@pytest.mark.parametrize("overrides", [{}, {"shape_input": "length_width", "location_input": "map_and_position"},
                                       {"pooling": "streams", "patch_size": 4}, {"image_stem": "conv"}])
def test_tmdl_export_matches_pytorch(tmp_path, overrides):
    torch.manual_seed(0)
    model = TMDL(preset("tiny", **overrides))
    path = tmp_path / "tmdl" / "1" / "model.onnx"
    parity = export_tmdl(model, path)
    assert max(parity.values()) < 1e-4, parity
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(TMDL_INPUTS)
    assert [o.name for o in graph.output] == list(TMDL_OUTPUTS)
    clinical = graph.input[list(TMDL_INPUTS).index("clinical")].type.tensor_type.shape.dim[1].dim_value
    assert clinical == len(model.config.clinical_inputs)


def test_triton_configs_name_every_tensor():
    config = preset("compact")
    text = tmdl_pbtxt(config)
    assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" in text and "KIND_GPU" in text
    for name in TMDL_INPUTS + TMDL_OUTPUTS:
        assert f'name: "{name}"' in text
    assert f"dims: [ 3, {config.image_size}, {config.image_size} ]" in text
    assert f"dims: [ {config.image_tokens} ]" in text
    assert 'name: "clinical" data_type: TYPE_FP32 dims: [ 4 ]' in text
    assert 'name: "clinical" data_type: TYPE_FP32 dims: [ 5 ]' in tmdl_pbtxt(preset("compact", shape_input="length_width"))
    enc = text_encoder_pbtxt()
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ 50 ]' in enc
    assert 'name: "token_states" data_type: TYPE_FP32 dims: [ 50, 384 ]' in enc


def test_the_shipped_onnx_computes_what_the_shipped_checkpoint_computes():
    """What Triton and ONNX Runtime serve (model_repository/tmdl/1/model.onnx) is the checkpoint in
    models/tmdl-compact, not a stale export: the same outputs on inputs with an occluded group and a
    missing report (a fresh export's parity says nothing about the file that ships)."""
    import numpy as np
    import onnxruntime as ort

    from llnm.config import REPO_ROOT
    from llnm.model.export import dummy_inputs
    from llnm.model.train import load_model

    model, _ = load_model(REPO_ROOT / "models" / "tmdl-compact")
    model.eval()
    inputs = dummy_inputs(model.config, batch=4, seed=7)
    inputs["group_keep"][1, 2] = 0.0  # the report occluded
    inputs["text_mask"][2] = 0.0  # no report
    with torch.no_grad():
        logit, risk, _, _ = model(*(inputs[k] for k in TMDL_INPUTS))
    session = ort.InferenceSession(str(REPO_ROOT / "model_repository" / "tmdl" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = dict(zip(TMDL_OUTPUTS, session.run(list(TMDL_OUTPUTS), {k: v.numpy() for k, v in inputs.items()})))
    assert np.abs(got["logit"][:, 0] - logit.numpy()).max() < 1e-4
    assert np.abs(got["risk_probabilities"] - risk.softmax(-1).numpy()).max() < 1e-4
    assert len(set(np.round(got["logit"][:, 0], 3))) > 1  # the rows differ: the comparison has teeth


def test_the_runtime_feeds_the_served_model_the_configuration_it_was_trained_with(tmp_path):
    """The runtime reads tmdl/1/preset.json beside the ONNX file (written by `llnm export`), so a model
    retrained with another report window or x_s is fed what it expects whatever LLNM_PRESET says; a
    repository without the file (exported before it existed) falls back to the named preset."""
    from llnm.config import REPO_ROOT
    from llnm.model.config import SERVED_CONFIG, TMDLConfig, served_config

    shipped = TMDLConfig.load(REPO_ROOT / "models" / "tmdl-compact" / "preset.json")
    assert served_config(REPO_ROOT / "model_repository", fallback="tiny") == shipped
    retrained = preset("compact", text_tokens=150, shape_input="length_width")
    (tmp_path / SERVED_CONFIG).parent.mkdir(parents=True)
    (tmp_path / SERVED_CONFIG).write_text(retrained.to_json())
    assert served_config(tmp_path, fallback="compact") == retrained
    assert served_config(tmp_path / "elsewhere", fallback="tiny") == preset("tiny")
