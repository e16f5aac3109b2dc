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


def test_regrade_maps_grey_levels_by_a_display_curve():
    from llnm.segmentation.preprocess import regrade

    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(regrade(image, 1.0), image)
    dark, bright = regrade(image, 1.4).astype(int), regrade(image, 0.7).astype(int)
    assert (dark <= image).all() and (bright >= image).all() and dark[8, 0] < 128 - 20 < bright[8, 0] - 40
    assert dark[0, 0] == bright[0, 0] == 0 and dark[-1, -1] == bright[-1, -1] == 255
    assert (np.diff(dark.ravel()) >= 0).all()


def test_soften_blurs_without_moving_the_mean():
    from llnm.segmentation.preprocess import soften

    image = ultrasound_like(seed=1, nodule_at=(150, 200, 30))
    soft = soften(image, 1.5).astype(float)
    detail = lambda a: float(np.abs(np.diff(a.astype(float), axis=1)).mean())  # noqa: E731
    assert detail(soft) < 0.7 * detail(image) and abs(soft.mean() - image.mean()) < 1.0
    assert np.array_equal(soften(image, 0.0), image)


@pytest.mark.parametrize("gamma_range, blur_max", [(None, None), ((0.7, 1.4), None), (None, 2.0)])
def test_device_augmentation_changes_only_the_later_copies_of_whole_frames(tmp_path, gamma_range, blur_max):
    """The first copy of each real whole frame is the frame as the runtime sees it; with a gamma range
    the second is regraded (another device's display curve), with a blur it is softer (another
    transducer or filter), without either it is the same image."""
    from PIL import Image

    from llnm.segmentation.data import case_split
    from llnm.segmentation.train_nodule import NoduleTrainConfig, build_dataset, gamma_draw

    frames = tmp_path / "data" / "ddti_frames"
    (frames / "image").mkdir(parents=True)
    (frames / "mask").mkdir()
    for empty in ("tg3k/train/image", "tg3k/train/mask", "ddti/cropped", "ddti/mask"):  # no crops, no TG3K
        (tmp_path / "data" / empty).mkdir(parents=True)
    names = [f"{case}_1" for case in range(40) if case_split(f"{case}_1.jpg") == "train"][:3]
    for k, name in enumerate(names):
        Image.fromarray(ultrasound_like(seed=k, nodule_at=(150, 200, 30))).save(frames / "image" / f"{name}.png")
        yy, xx = np.mgrid[:300, :400]
        Image.fromarray((((yy - 150) ** 2 + (xx - 200) ** 2 < 900) * 255).astype(np.uint8)).save(
            frames / "mask" / f"{name}.png")
    cfg = NoduleTrainConfig(data=tmp_path / "data", out=tmp_path / "out", gamma_range=gamma_range, blur_max=blur_max)
    images = build_dataset(cfg).parent / "images" / "train"
    for name in names:
        first, second = (np.asarray(Image.open(images / f"frame{k}_{name}.png")).astype(float) for k in (0, 1))
        assert np.array_equal(first, second) == (gamma_range is None and blur_max is None)
        if blur_max is not None:  # softer, the same brightness
            detail = [float(np.abs(np.diff(a, axis=1)).mean()) for a in (first, second)]
            assert detail[1] < detail[0] and abs(first.mean() - second.mean()) < 1.0
    draws = [gamma_draw(np.random.default_rng(s), (0.7, 1.4)) for s in range(400)]
    assert 0.7 <= min(draws) and max(draws) <= 1.4 and abs(np.mean(np.log(draws)) - np.log(0.7 * 1.4) / 2) < 0.03


def test_a_training_set_written_elsewhere_is_found_and_pointed_at_where_it_now_lies(tmp_path):
    """`llnm train-seg --dataset DIR` (a set packed for a GPU machine, scripts/device/pack_nodule.py):
    its yaml names the folder it lies in now; a folder that is no training set is refused by name."""
    from llnm.segmentation.train_nodule import prepared_dataset

    root = tmp_path / "moved" / "nodule"
    for part in ("images/train", "images/val", "labels/train", "labels/val"):
        (root / part).mkdir(parents=True)
    (root / "data.yaml").write_text("path: /somewhere/else\ntrain: images/train\nval: images/val\n")
    yaml_path = prepared_dataset(root)
    assert yaml_path == root / "data.yaml"
    assert f"path: {root.resolve()}\n" in yaml_path.read_text() and "0: nodule" in yaml_path.read_text()
    (root / "labels" / "val").rmdir()
    with pytest.raises(FileNotFoundError, match="labels/val"):
        prepared_dataset(root)
