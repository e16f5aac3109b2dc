"""The gland model's recovery from a shipped ONNX file: the rebuilt checkpoint computes what the file
computes (so fine-tuning starts from the shipped model), and a foreign file is refused."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra")

from llnm.segmentation import gland  # noqa: E402

from .conftest import ultrasound_like  # noqa: E402


def test_checkpoint_rebuilt_from_an_exported_gland_model_computes_what_the_file_computes(tmp_path):
    import onnxruntime as ort

    from llnm.segmentation.train_gland import build_model, checkpoint_from_onnx, export_onnx, load_checkpoint

    torch.manual_seed(0)
    model = build_model()
    model.train()
    with torch.no_grad():  # move the batch norms' statistics away from their defaults, as training does
        for seed in range(3):
            frames = [ultrasound_like((120, 160), seed=seed + k) for k in range(4)]
            model(torch.from_numpy(np.stack([gland.gland_input(f)[0][0] for f in frames])))
    torch.save(model.state_dict(), tmp_path / "trained.pt")
    onnx_path = export_onnx(tmp_path / "trained.pt", tmp_path / "model.onnx")
    calibration = [ultrasound_like((120, 160), seed=100 + k) for k in range(8)]
    rebuilt = load_checkpoint(checkpoint_from_onnx(onnx_path, calibration, tmp_path / "rebuilt.pt"))
    x = np.stack([gland.gland_input(ultrasound_like((100, 140), seed=200 + k))[0][0] for k in range(3)])
    expected = ort.InferenceSession(str(onnx_path)).run(None, {gland.INPUT_NAME: x})[0]
    with torch.no_grad():
        got = torch.sigmoid(rebuilt(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


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
