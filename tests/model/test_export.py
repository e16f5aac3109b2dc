"""ONNX export of TMDL: parity with PyTorch and a Triton config that names the graph's tensors."""

import onnx
import torch

from llnm.model.config import preset
from llnm.model.export import TMDL_INPUTS, TMDL_OUTPUTS, export_tmdl, text_encoder_pbtxt, tmdl_pbtxt
from llnm.model.tmdl import TMDL


def test_tmdl_export_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = TMDL(preset("tiny"))
    path = tmp_path / "tmdl" / "1" / "model.onnx"
    parity = export_tmdl(model, path)
    assert max(parity.values()) < 1e-4, parity
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(TMDL_INPUTS)
    assert [o.name for o in graph.output] == list(TMDL_OUTPUTS)


def test_triton_configs_name_every_tensor():
    config = preset("compact")
    text = tmdl_pbtxt(config)
    assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" in text and "KIND_GPU" in text
    for name in TMDL_INPUTS + TMDL_OUTPUTS:
        assert f'name: "{name}"' in text
    assert f"dims: [ 3, {config.image_size}, {config.image_size} ]" in text
    assert f"dims: [ {config.image_tokens} ]" in text
    enc = text_encoder_pbtxt()
    assert 'name: "input_ids" data_type: TYPE_INT64 dims: [ 50 ]' in enc
    assert 'name: "token_states" data_type: TYPE_FP32 dims: [ 50, 384 ]' in enc
