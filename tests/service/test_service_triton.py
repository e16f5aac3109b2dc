"""The Triton backend against the real tritonserver (nvidia-pytriton wheel, Python-backend copies of the
models made by triton_harness): same outputs as in-process ONNX Runtime, over HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import free_port, metric
from triton_harness import TritonServer, python_backend_repository, triton_root

from llnm.config import REPO_ROOT
from llnm.inference.backend import ModelNotFound
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.inference.triton_backend import InferenceUnavailable, TritonBackend
from llnm.worker.process import is_transient

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(triton_root() is None, reason="tritonserver not installed: scripts/triton-env.sh")]

TINY_CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "r" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "n" data_type: TYPE_INT64 dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { kind: KIND_GPU count: 1 } ]
"""


def _tiny_repository(root: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["r"]),
         helper.make_node("Cast", ["r"], ["n"], to=TensorProto.INT64)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["b", 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["b", 3])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "tiny" / "1").mkdir(parents=True)
    onnx.save(model, root / "tiny" / "1" / "model.onnx")
    (root / "tiny" / "config.pbtxt").write_text(TINY_CONFIG)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    repo = _tiny_repository(tmp_path_factory.mktemp("repo"))
    server = TritonServer(repo, tmp_path_factory.mktemp("triton")).start()
    yield repo, server
    server.stop()


def test_harness_writes_a_python_backend_copy_with_the_same_interface(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = _tiny_repository(tmp_path / "repo")
    assert python_backend_repository(repo, tmp_path / "out") == ["tiny"]
    config = text_format.Parse((tmp_path / "out" / "tiny" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.backend == "python" and not config.platform
    assert [i.name for i in config.input] == ["x"] and [o.name for o in config.output] == ["r", "n"]
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in config.instance_group)
    assert (tmp_path / "out" / "tiny" / "1" / "model.onnx").resolve() == (repo / "tiny" / "1" / "model.onnx")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_and_onnxruntime_give_the_same_results(tiny, protocol):
    from llnm.observability import metrics
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def snapshot():
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())
                for s in f.samples}

    repo, server = tiny
    before = snapshot()
    url = server.http_url if protocol == "http" else server.grpc_url
    triton = TritonBackend(url, model_repository=repo)
    ort = OnnxRuntimeBackend(repo)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    got, want = triton.infer("tiny", {"x": x}), ort.infer("tiny", {"x": x})
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name])
    assert triton.has_model("tiny") and not triton.has_model("absent")
    assert triton.model_version("tiny") == ort.model_version("tiny")
    with pytest.raises(ModelNotFound):
        triton.infer("absent", {"x": x})
    after = snapshot()
    assert metric(after, "llnm_triton_request_seconds_count", model="tiny") > \
        metric(before, "llnm_triton_request_seconds_count", model="tiny")


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_triton_is_a_transient_fault(scheme):
    backend = TritonBackend(f"{scheme}://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(InferenceUnavailable) as err:
        backend.infer("tiny", {"x": np.zeros((1, 4), np.float32)})
    assert is_transient(err.value)
    assert not backend.has_model("tiny")


def _example_inputs(session) -> dict[str, np.ndarray]:
    """Inputs of the right names, dtypes and ranks: dynamic dims 1 (batch) or 8; ints are ones."""
    rng = np.random.default_rng(1)
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(uint8)": np.uint8, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}
    feed = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 8) for i, d in enumerate(spec.shape)]
        dtype = dtypes[spec.type]
        if np.issubdtype(dtype, np.floating):
            feed[spec.name] = rng.random(shape).astype(dtype)
        else:
            feed[spec.name] = np.ones(shape, dtype)
    return feed


def test_every_model_in_the_repository_serves_the_same_on_triton(tmp_path):
    """model_repository/ as shipped: each model with a config.pbtxt and 1/model.onnx loads in Triton
    (its config parses and matches) and answers what ONNX Runtime answers."""
    repo = REPO_ROOT / "model_repository"
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt") if (p.parent / "1" / "model.onnx").is_file())
    if not models:
        pytest.skip("no exported model with config.pbtxt in model_repository/ yet")
    ort = OnnxRuntimeBackend(repo, threads=1)
    with TritonServer(repo, tmp_path, models) as server:
        triton = TritonBackend(server.http_url, model_repository=repo, timeout_s=120)
        for name in models:
            feed = _example_inputs(ort._session(name))
            got, want = triton.infer(name, feed), ort.infer(name, feed)
            assert got.keys() == want.keys(), name
            for out in want:
                np.testing.assert_allclose(got[out], want[out], rtol=1e-4, atol=1e-4, err_msg=f"{name}:{out}")
