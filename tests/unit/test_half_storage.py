"""Weights stored in half, computed in float32: the file shrinks, the answers do not move."""

import numpy as np
import pytest

from llnm.inference.half_storage import HALF_SUFFIX, read_weights, store_weights_in_half

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _model(path, weight: np.ndarray, bias: np.ndarray) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_weights_in_half_give_the_float32_answer_from_a_smaller_file(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 32)).astype(np.float32)
    bias = rng.normal(size=32).astype(np.float32)
    path = tmp_path / "m.onnx"
    _model(path, weight, bias)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    size = path.stat().st_size
    store_weights_in_half(path)
    out = ort.InferenceSession(str(path)).run(None, {"x": x})
    assert out[0].dtype == np.float32
    assert path.stat().st_size < 0.6 * size
    np.testing.assert_allclose(out[0], before, rtol=0, atol=5e-3 * np.abs(before).max())
    names = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert "w" + HALF_SUFFIX in names and "w" not in names


def test_read_weights_gives_original_names_whether_stored_in_half_or_not(tmp_path):
    weight = np.linspace(-2, 2, 64 * 32, dtype=np.float32).reshape(64, 32)
    bias = np.arange(8, dtype=np.float32)  # small: kept in float32
    path = tmp_path / "m.onnx"
    _model(path, weight[:, :8], bias)
    store_weights_in_half(path)
    weights = read_weights(path)
    assert set(weights) == {"w", "b"}
    assert weights["w"].dtype == np.float32
    np.testing.assert_allclose(weights["w"], weight[:, :8], rtol=1e-3)
    np.testing.assert_array_equal(weights["b"], bias)
