"""Shared helpers: synthetic YOLOv8-seg outputs and a fake backend (no model files needed)."""

from __future__ import annotations

import numpy as np
import pytest

from llnm.config import REPO_ROOT
from llnm.segmentation import gland, nodule

MODEL_REPOSITORY = REPO_ROOT / "model_repository"


def yolo_outputs(instances: list[tuple[tuple[float, float, float, float], float, int]],
                 anchors: int = nodule.anchors()):
    """(output0, output1) for one image: each instance is (cx, cy, w, h) in model pixels, a score and
    the index of the prototype channel that draws it (that prototype is +10 inside its box, -10 outside)."""
    rows = 4 + 1 + nodule.NUM_MASKS
    output0 = np.zeros((1, rows, anchors), dtype=np.float32)
    grid = nodule.INPUT_SIZE // 4
    protos = np.full((1, nodule.NUM_MASKS, grid, grid), -10.0, dtype=np.float32)
    for k, ((cx, cy, w, h), score, proto) in enumerate(instances):
        output0[0, :4, k] = (cx, cy, w, h)
        output0[0, 4, k] = score
        output0[0, 5 + proto, k] = 1.0
        x0, y0, x1, y1 = (int(v / 4) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        protos[0, proto, y0:y1, x0:x1] = 10.0
    return output0, protos


def mirror_view(output0: np.ndarray) -> np.ndarray:
    """What the model answers on the mirror image: box centres mirrored (prototypes: mirror them too)."""
    mirrored = output0.copy()
    mirrored[:, 0] = nodule.INPUT_SIZE - output0[:, 0]
    return mirrored


def smaller_view(output0: np.ndarray, protos: np.ndarray, fill: float):
    """What the model answers on the frame letterboxed into `fill` of the side: every box and prototype
    shrunk by `fill` about the input's centre (within a pixel of the runtime's rounding)."""
    from scipy import ndimage

    centre = nodule.INPUT_SIZE / 2
    small0 = output0.copy()
    small0[:, :2] = centre + (output0[:, :2] - centre) * fill
    small0[:, 2:4] = output0[:, 2:4] * fill
    grid_centre = (protos.shape[-1] - 1) / 2
    small1 = np.stack([[ndimage.affine_transform(p, np.eye(2) / fill, offset=grid_centre * (1 - 1 / fill),
                                                 order=0, cval=-10.0) for p in image] for image in protos])
    return small0, small1.astype(np.float32)


class FakeBackend:
    """Answers like the shipped models: nodule outputs given up front; gland probability = `gland_mask`
    letterboxed exactly as the runtime letterboxes its input (so a perfect model)."""

    def __init__(self, nodule_outputs=None, gland_mask: np.ndarray | None = None) -> None:
        self.nodule_outputs = nodule_outputs
        self.gland_mask = gland_mask
        self.calls: list[str] = []

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(model)
        if model == "nodule_seg":
            batch = inputs[nodule.INPUT_NAME]
            # the frame, its mirror image, and both again at SMALL_FILL of the side
            assert batch.shape == (4, 3, nodule.INPUT_SIZE, nodule.INPUT_SIZE)
            np.testing.assert_array_equal(batch[1], batch[0][..., ::-1])
            np.testing.assert_array_equal(batch[3], batch[2][..., ::-1])
            out0, out1 = self.nodule_outputs or yolo_outputs([])
            small0, small1 = smaller_view(out0, out1, nodule.SMALL_FILL)
            return {nodule.OUTPUT_BOXES: np.concatenate([out0, mirror_view(out0), small0, mirror_view(small0)]),
                    nodule.OUTPUT_PROTOS: np.concatenate([out1, out1[..., ::-1], small1, small1[..., ::-1]])}
        batch = inputs[gland.INPUT_NAME]
        assert batch.shape == (2, 1, gland.INPUT_SIZE, gland.INPUT_SIZE)  # the frame and its mirror image
        np.testing.assert_array_equal(batch[1], batch[0][..., ::-1])
        from llnm.segmentation.preprocess import letterbox

        if self.gland_mask is None:  # no gland anywhere
            prob = np.zeros((1, 1, gland.INPUT_SIZE, gland.INPUT_SIZE), dtype=np.float32)
        else:
            boxed, _ = letterbox(self.gland_mask.astype(np.uint8) * 255, gland.INPUT_SIZE, 0)
            prob = (boxed / 255.0).astype(np.float32)[None, None]
        return {gland.OUTPUT_NAME: np.concatenate([prob, prob[..., ::-1]])}

    def has_model(self, model: str) -> bool:
        return True

    def model_version(self, model: str) -> str:
        return "fake"


@pytest.fixture
def shipped_backend():
    """OnnxRuntimeBackend over the shipped models; skips when a model file is absent."""
    from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(MODEL_REPOSITORY, threads=1)
    for name in ("nodule_seg", "thyroid_seg"):
        if not backend.has_model(name):
            pytest.skip(f"shipped model {name} absent")
    return backend


def ultrasound_like(shape=(300, 400), seed=0, nodule_at=None) -> np.ndarray:
    """A speckled frame with a brighter band (gland) and optionally a dark round region (nodule)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    base = 40 + 60 * ((yy > h * 0.3) & (yy < h * 0.7))
    if nodule_at is not None:
        cy, cx, r = nodule_at
        base = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 25, base)
    return np.clip(base * rng.rayleigh(1.0, shape) / 1.25, 0, 255).astype(np.uint8)
