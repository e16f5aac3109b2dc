"""Continuing training from the shipped nodule model: its ONNX file rebuilt as an Ultralytics checkpoint."""

import numpy as np
import pytest

from llnm.segmentation import nodule

from .conftest import MODEL_REPOSITORY, ultrasound_like

pytest.importorskip("ultralytics")


def test_checkpoint_rebuilt_from_the_shipped_onnx_computes_what_the_onnx_file_computes(tmp_path):
    import onnxruntime as ort
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    from llnm.segmentation.train_nodule import _boxes, checkpoint_from_onnx

    onnx_path = MODEL_REPOSITORY / "nodule_seg" / "1" / "model.onnx"
    frames = [ultrasound_like((240 + 20 * k, 320), seed=k, nodule_at=(120, 100 + 20 * k, 30)) for k in range(6)]
    model, _ = load_checkpoint(str(checkpoint_from_onnx(onnx_path, frames[:4], tmp_path / "init.pt")))
    batch = np.concatenate([nodule.nodule_input(f)[0] for f in frames[4:]])  # frames it was not calibrated on
    expected = ort.InferenceSession(str(onnx_path)).run([nodule.OUTPUT_BOXES], {nodule.INPUT_NAME: batch})[0]
    with torch.no_grad():
        got = _boxes(model.eval()(torch.from_numpy(batch))).numpy()
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(float(m.running_var.min()) > 0 for m in norms)
    assert not all(float(m.running_mean.abs().max()) == 0 for m in norms)  # statistics were measured


def test_an_onnx_file_that_is_not_a_yolov8_seg_export_is_refused(tmp_path):
    from llnm.segmentation.train_nodule import checkpoint_from_onnx

    with pytest.raises(ValueError, match="not a YOLOv8-seg export"):
        checkpoint_from_onnx(MODEL_REPOSITORY / "thyroid_seg" / "1" / "model.onnx", [], tmp_path / "x.pt")
