"""The Triton backend against the real tritonserver (nvidia-pytriton wheel, Python-backend copies of the
models made by triton_harness): same outputs as in-process ONNX Runtime, over HTTP and gRPC; a model whose
declared sha256 (config.pbtxt llnm_sha256) is missing or not the worker's own is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from support import free_port, metric
from triton_harness import TritonServer, need_triton, python_backend_repository

from llnm import audit as A
from llnm.config import REPO_ROOT
from llnm.inference import provenance
from llnm.inference.backend import ModelMismatch, ModelNotFound
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.inference.triton_backend import InferenceUnavailable, TritonBackend
from llnm.observability import metrics as llnm_metrics
from llnm.worker.process import is_transient

pytestmark = [pytest.mark.e2e]


def metric_value(name: str, **labels: str) -> float:
    return llnm_metrics.REGISTRY.get_sample_value(name, labels) or 0.0

TINY_CONFIG = """name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "r" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "n" data_type: TYPE_INT64 dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
instance_group [ { kind: KIND_GPU count: 1 } ]
model_warmup [ { name: "zeros" batch_size: 2
                 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]
"""


def _tiny_repository(root: Path, shift: float = 5.0) -> Path:
    """`tiny` (its config declares its file's sha256, as `llnm model-hashes --write` does) and
    `tiny_undeclared` (the same model, a config without llnm_sha256). `shift` changes the weights: another
    model with the same interface."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.arange(12, dtype=np.float32).reshape(4, 3) - shift) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["r"]),
         helper.make_node("Cast", ["r"], ["n"], to=TensorProto.INT64)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["b", 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["b", 3])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for name in ("tiny", "tiny_undeclared"):
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(TINY_CONFIG.replace('name: "tiny"', f'name: "{name}"'))
    provenance.write_repository(root, ["tiny"])
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need_triton()
    repo = _tiny_repository(tmp_path_factory.mktemp("repo"))
    server = TritonServer(repo, tmp_path_factory.mktemp("triton"), ["tiny", "tiny_undeclared"]).start()
    server.metrics_at_start = server.metrics()  # before any test sends a request
    yield repo, server
    server.stop()


def test_harness_writes_a_python_backend_copy_with_the_same_interface(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = _tiny_repository(tmp_path / "repo")
    assert python_backend_repository(repo, tmp_path / "out", ["tiny"]) == ["tiny"]
    config = text_format.Parse((tmp_path / "out" / "tiny" / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    assert config.backend == "python" and not config.platform
    assert [i.name for i in config.input] == ["x"] and [o.name for o in config.output] == ["r", "n"]
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in config.instance_group)
    assert config.parameters[provenance.PARAMETER].string_value == provenance.file_sha256(
        repo / "tiny" / "1" / "model.onnx")
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


def _successes(samples: dict, model: str) -> float:
    """Triton's count of successful requests of version 1 of `model` (the parser names counters *_total)."""
    key = (("model", model), ("version", "1"))
    return samples.get(("nv_inference_request_success_total", key),
                       samples.get(("nv_inference_request_success", key), 0.0))


def test_triton_runs_as_the_chart_runs_it(tiny):
    """Explicit model control loads exactly the named models; each ran its warm-up before the server said
    ready (Triton counts the warm-up's requests: batch 2, before any client sent one); metrics are served."""
    import json
    import urllib.request

    repo, server = tiny
    args = server.process.args
    assert "--model-control-mode=explicit" in args and "--strict-readiness=true" in args
    assert {a for a in args if a.startswith("--load-model=")} == {"--load-model=tiny", "--load-model=tiny_undeclared"}
    request = urllib.request.Request(f"{server.http_url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        index = {m["name"]: m.get("state") for m in json.loads(r.read())}
    assert index == {"tiny": "READY", "tiny_undeclared": "READY"}
    assert _successes(server.metrics_at_start, "tiny") == 2


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_served_model_other_than_the_workers_is_refused(tiny, tmp_path, protocol):
    """Triton serves `tiny` declaring its sha256; a worker built with other `tiny` weights (its
    LLNM_MODEL_REPOSITORY) refuses to run it, with a message that names both hashes and what to do."""
    repo, server = tiny
    url = server.http_url if protocol == "http" else server.grpc_url
    other = _tiny_repository(tmp_path / "other", shift=4.0)
    served = provenance.file_sha256(repo / "tiny" / "1" / "model.onnx")
    own = provenance.file_sha256(other / "tiny" / "1" / "model.onnx")
    assert served != own
    backend = TritonBackend(url, model_repository=other)
    before = metric_value("llnm_triton_model_mismatches_total", model="tiny")
    with pytest.raises(ModelMismatch) as err:
        backend.infer("tiny", {"x": np.zeros((1, 4), np.float32)})
    message = str(err.value)
    assert "'tiny'" in message and served[:12] in message and own[:12] in message and "refusing" in message
    assert "llnm model-hashes --check" in message
    with pytest.raises(ModelMismatch):
        backend.model_version("tiny")  # what a result would record: refused too
    assert metric_value("llnm_triton_model_mismatches_total", model="tiny") == before + 2
    assert is_transient(err.value)  # retried: during a rollout an old Triton pod may still answer
    assert A.error_text(err.value).startswith("ModelMismatch: Triton at")  # the audit keeps the message


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_served_model_without_a_declared_hash_is_refused(tiny, protocol):
    repo, server = tiny
    url = server.http_url if protocol == "http" else server.grpc_url
    backend = TritonBackend(url, model_repository=repo)
    with pytest.raises(ModelMismatch, match="without a declared llnm_sha256"):
        backend.infer("tiny_undeclared", {"x": np.zeros((1, 4), np.float32)})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_matching_model_runs_and_its_version_is_the_served_hash(tiny, tmp_path, protocol):
    """The worker's own copy (another folder, the same bytes) matches: the model runs, and the version a
    result records is the hash Triton declares, the one the ONNX Runtime backend reports for the file. With
    no local copy at all, the worker records what Triton declares."""
    repo, server = tiny
    url = server.http_url if protocol == "http" else server.grpc_url
    own = tmp_path / "own"
    shutil.copytree(repo, own)
    backend = TritonBackend(url, model_repository=own)
    backend.infer("tiny", {"x": np.ones((2, 4), np.float32)})
    served = provenance.declared_in_text((repo / "tiny" / "config.pbtxt").read_text())
    assert backend.model_version("tiny") == served[:12] == OnnxRuntimeBackend(own).model_version("tiny")
    assert TritonBackend(url, model_repository=tmp_path / "empty").model_version("tiny") == served[:12]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_unreachable_triton_is_a_transient_fault(scheme):
    backend = TritonBackend(f"{scheme}://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(InferenceUnavailable) as err:
        backend.infer("tiny", {"x": np.zeros((1, 4), np.float32)})
    assert is_transient(err.value)
    with pytest.raises(InferenceUnavailable):  # "cannot say now", never "absent": the study is retried
        backend.has_model("tiny")


class SilentPeer:
    """A TCP server that accepts connections and then, per `mode`, never answers ("hang") or reads the
    request and closes ("close"): a Triton wedged or killed mid-answer."""

    def __init__(self, mode: str) -> None:
        import socket
        import threading

        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "close":
                conn.recv(65536)
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
@pytest.mark.parametrize("mode", ["hang", "close"])
def test_a_triton_that_hangs_or_drops_the_connection_is_a_transient_fault_within_the_timeout(scheme, mode):
    import time

    peer = SilentPeer(mode)
    try:
        backend = TritonBackend(f"{scheme}://127.0.0.1:{peer.port}", timeout_s=1)
        for call in (lambda: backend.has_model("tiny"),
                     lambda: backend.infer("tiny", {"x": np.zeros((1, 4), np.float32)})):
            start = time.monotonic()
            with pytest.raises(InferenceUnavailable) as err:
                call()
            assert is_transient(err.value) and time.monotonic() - start < 15
    finally:
        peer.close()


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
    (its config parses and matches, its warm-up runs) and answers what ONNX Runtime answers."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    need_triton()
    repo = REPO_ROOT / "model_repository"
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt") if (p.parent / "1" / "model.onnx").is_file())
    if not models:
        pytest.skip("no exported model with config.pbtxt in model_repository/ yet")
    ort = OnnxRuntimeBackend(repo, threads=1)
    with TritonServer(repo, tmp_path, models) as server:
        warmed = server.metrics()
        for name in models:  # the warm-up of each config ran before ready: batch 1 and its largest batch
            config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            assert {w.batch_size for w in config.model_warmup} == {1, config.max_batch_size}, name
            assert _successes(warmed, name) == sum(w.batch_size for w in config.model_warmup), name
        triton = TritonBackend(server.http_url, model_repository=repo, timeout_s=120)
        for name in models:
            feed = _example_inputs(ort._session(name))
            got, want = triton.infer(name, feed), ort.infer(name, feed)
            assert got.keys() == want.keys(), name
            for out in want:
                np.testing.assert_allclose(got[out], want[out], rtol=1e-4, atol=1e-4, err_msg=f"{name}:{out}")
