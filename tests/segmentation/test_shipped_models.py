"""The shipped ONNX models load, match their Triton configs, and run through OnnxRuntimeBackend."""

import re
import subprocess
import sys

import numpy as np
import pytest

from llnm.segmentation import gland, nodule, segment_gland, segment_nodule

from .conftest import MODEL_REPOSITORY, ultrasound_like


def _config(name):
    return (MODEL_REPOSITORY / name / "config.pbtxt").read_text()


@pytest.mark.parametrize("name, inputs, outputs", [
    ("nodule_seg", {nodule.INPUT_NAME: [3, nodule.INPUT_SIZE, nodule.INPUT_SIZE]},
     {nodule.OUTPUT_BOXES: [37, nodule.anchors()], nodule.OUTPUT_PROTOS: [32, nodule.INPUT_SIZE // 4, nodule.INPUT_SIZE // 4]}),
    ("thyroid_seg", {gland.INPUT_NAME: [1, gland.INPUT_SIZE, gland.INPUT_SIZE]},
     {gland.OUTPUT_NAME: [1, gland.INPUT_SIZE, gland.INPUT_SIZE]}),
])
def test_triton_config_names_the_runtime_tensors(name, inputs, outputs):
    text = _config(name)
    assert 'platform: "onnxruntime_onnx"' in text and "dynamic_batching" in text and "KIND_GPU" in text
    assert re.search(rf'name:\s*"{name}"', text)
    for tensor, dims in {**inputs, **outputs}.items():
        block = re.search(rf'name:\s*"{tensor}"\s*data_type:\s*TYPE_FP32\s*dims:\s*\[([^\]]*)\]', text)
        assert block, tensor
        assert [int(v) for v in block.group(1).split(",")] == dims


def test_onnx_files_match_their_configs_and_stay_small(shipped_backend):
    import onnxruntime as ort

    total = 0
    for name in ("nodule_seg", "thyroid_seg"):
        path = MODEL_REPOSITORY / name / "1" / "model.onnx"
        total += path.stat().st_size
        assert path.stat().st_size < 25e6
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        text = _config(name)
        for tensor in session.get_inputs() + session.get_outputs():
            assert f'"{tensor.name}"' in text
            assert tensor.shape[1:] == [int(v) for v in re.search(
                rf'name:\s*"{tensor.name}"\s*data_type:\s*TYPE_FP32\s*dims:\s*\[([^\]]*)\]', text).group(1).split(",")]
    assert total < 60e6


def test_shipped_models_run_on_a_synthetic_frame(shipped_backend):
    frame = ultrasound_like((360, 480), nodule_at=(180, 240, 50))
    found = segment_nodule(shipped_backend, frame)
    assert found is None or (found.mask.shape == frame.shape and found.mask.any() and found.candidates >= 1)
    mask = segment_gland(shipped_backend, frame)
    assert mask is None or (mask.shape == frame.shape and mask.dtype == bool)
    batch = np.zeros((2, 1, gland.INPUT_SIZE, gland.INPUT_SIZE), dtype=np.float32)
    assert shipped_backend.infer("thyroid_seg", {gland.INPUT_NAME: batch})[gland.OUTPUT_NAME].shape[0] == 2


def test_blank_frames_give_no_nodule(shipped_backend):
    for value in (0, 128, 255):
        assert segment_nodule(shipped_backend, np.full((300, 400), value, dtype=np.uint8)) is None


def test_running_the_segmentation_never_imports_torch():
    code = (
        "import sys, numpy as np\n"
        "from llnm.segmentation import segment_nodule, segment_gland\n"
        "from llnm.segmentation.evaluate import evaluate_folder\n"
        "from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend\n"
        f"b = OnnxRuntimeBackend(r'{MODEL_REPOSITORY}', threads=1)\n"
        "img = np.full((200, 300), 90, np.uint8)\n"
        "if b.has_model('nodule_seg'): segment_nodule(b, img)\n"
        "if b.has_model('thyroid_seg'): segment_gland(b, img)\n"
        "bad = [m for m in ('torch', 'ultralytics', 'segmentation_models_pytorch', 'cv2') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
