"""The gland model's recovery from a shipped ONNX file: the rebuilt checkpoint computes what the file
computes (so fine-tuning starts from the shipped model), and a foreign file is refused."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra")

from llnm.segmentation import gland  # noqa: E402

from .conftest import ultrasound_like  # noqa: E402


def test_checkpoint_rebuilt_from_an_exported_gland_model_computes_what_the_file_computes(tmp_path):
    from llnm.segmentation.train_gland import build_model, export_onnx

    torch.manual_seed(0)
    model = build_model()
    model.train()
    with torch.no_grad():  # move the batch norms' statistics away from their defaults, as training does
        for seed in range(3):
            frames = [ultrasound_like((120, 160), seed=seed + k) for k in range(4)]
            model(torch.from_numpy(np.stack([gland.gland_input(f)[0][0] for f in frames])))
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    onnx_path = export_onnx(tmp_path / "trained.pt", tmp_path / "model.onnx")
    assert _stored_in_half(onnx_path)
    got, expected = _rebuilt_and_file_outputs(onnx_path, tmp_path, seed=100)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def _rebuilt_and_file_outputs(onnx_path, tmp_path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the checkpoint rebuilt from the file, calibrated on frames of `seed`; the file through ONNX
    Runtime), both on the same three frames none of the calibration saw."""
    import onnxruntime as ort

    from llnm.segmentation.train_gland import checkpoint_from_onnx, load_checkpoint

    calibration = [ultrasound_like((120, 160), seed=seed + k) for k in range(8)]
    rebuilt = load_checkpoint(checkpoint_from_onnx(onnx_path, calibration, tmp_path / "rebuilt.pt"))
    x = np.stack([gland.gland_input(ultrasound_like((100, 140), seed=seed + 100 + k))[0][0] for k in range(3)])
    expected = ort.InferenceSession(str(onnx_path)).run(None, {gland.INPUT_NAME: x})[0]
    with torch.no_grad():
        got = torch.sigmoid(rebuilt(torch.from_numpy(x))).numpy()
    return got, expected


def _stored_in_half(path) -> bool:
    """Every large weight of the file is a float16 initializer (`llnm.inference.half_storage`)."""
    import onnx
    from onnx import TensorProto

    from llnm.inference.half_storage import HALF_SUFFIX, MIN_ELEMENTS

    large = [i for i in onnx.load(str(path)).graph.initializer if int(np.prod(i.dims)) >= MIN_ELEMENTS]
    return bool(large) and all(i.name.endswith(HALF_SUFFIX) and i.data_type == TensorProto.FLOAT16 for i in large)


def test_the_shipped_gland_model_is_stored_in_half_and_rebuilds_into_what_it_computes(tmp_path):
    """The shipped file (weights in half, computed in float32) still turns back into a trainable
    checkpoint: fine-tuning (`llnm train-seg --model gland --init model.onnx`) starts from what ships."""
    from .conftest import MODEL_REPOSITORY

    onnx_path = MODEL_REPOSITORY / "thyroid_seg" / "1" / "model.onnx"
    assert _stored_in_half(onnx_path)
    got, expected = _rebuilt_and_file_outputs(onnx_path, tmp_path, seed=300)
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_an_onnx_file_that_is_not_the_gland_architecture_is_refused(tmp_path):
    from llnm.segmentation.train_gland import checkpoint_from_onnx

    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    path = tmp_path / "other.onnx"
    torch.onnx.export(Other(), (torch.zeros(1, 1, 128, 128),), str(path), input_names=["image"], dynamo=False)
    with pytest.raises(ValueError):
        checkpoint_from_onnx(path, [ultrasound_like((120, 160))], tmp_path / "x.pt")


def _fixed_gland(monkeypatch, mask: np.ndarray) -> None:
    from llnm.segmentation import train_gland

    monkeypatch.setattr(train_gland, "predict_gland", lambda model, image: mask)


def test_a_pseudo_label_is_the_starting_gland_joined_with_the_nodule(monkeypatch):
    """What a real frame teaches: the outlined nodule is gland, added to what the starting model saw."""
    from llnm.segmentation.train_gland import pseudo_label

    image = np.zeros((100, 100), dtype=np.uint8)
    gland_mask = np.zeros((100, 100), dtype=bool)
    gland_mask[30:70, 20:80] = True
    nodule = np.zeros((100, 100), dtype=bool)
    nodule[50:76, 40:60] = True  # 20 of its 26 rows inside the gland: the check passes
    _fixed_gland(monkeypatch, gland_mask)
    label = pseudo_label(None, image, nodule)
    assert label is not None
    assert label[nodule].all() and label[gland_mask].all()
    assert label.sum() == (gland_mask | nodule).sum()


def test_a_frame_whose_starting_gland_misses_the_nodule_or_spills_is_not_pseudo_labelled(monkeypatch):
    """An unchecked label would teach the model its own errors: a gland beside the nodule, or everywhere."""
    from llnm.segmentation.train_gland import pseudo_label

    image = np.zeros((100, 100), dtype=np.uint8)
    nodule = np.zeros((100, 100), dtype=bool)
    nodule[10:30, 10:30] = True
    beside = np.zeros((100, 100), dtype=bool)
    beside[25:70, 20:80] = True  # an eighth of the nodule
    _fixed_gland(monkeypatch, beside)
    assert pseudo_label(None, image, nodule) is None
    _fixed_gland(monkeypatch, np.ones((100, 100), dtype=bool))  # covers it, but fills the image
    assert pseudo_label(None, image, nodule) is None
    _fixed_gland(monkeypatch, np.zeros((100, 100), dtype=bool))
    assert pseudo_label(None, image, np.zeros((100, 100), dtype=bool)) is None
