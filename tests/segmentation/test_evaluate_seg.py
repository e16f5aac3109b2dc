import json

import numpy as np
import pytest
from PIL import Image

from llnm.cli import main
from llnm.segmentation.evaluate import dice, evaluate_folder, iou

from .conftest import MODEL_REPOSITORY, FakeBackend, ultrasound_like


def _write_folder(tmp_path, truth):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    frame = ultrasound_like(truth.shape, nodule_at=(100, 150, 40))
    Image.fromarray(frame).convert("RGB").save(images / "a.jpg", quality=95)
    Image.fromarray(frame).save(images / "b.png")
    Image.fromarray(frame).save(images / "c.gif")
    Image.fromarray(frame).save(images / "unmatched.png")
    as_grey = (truth * 255).astype(np.uint8)
    Image.fromarray(as_grey).save(masks / "a.png")
    Image.fromarray(as_grey).save(masks / "b.gif")
    Image.fromarray(as_grey).save(masks / "c.jpg", quality=90)  # JPEG blurs the edge; > 127 is foreground
    return images, masks


def test_dice_and_iou():
    a = np.zeros((4, 4), dtype=bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5) and iou(a, b) == pytest.approx(1 / 3)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_evaluate_folder_matches_by_stem_across_formats(tmp_path):
    truth = np.zeros((200, 300), dtype=bool)
    truth[50:150, 40:260] = True
    images, masks = _write_folder(tmp_path, truth)
    result = evaluate_folder(FakeBackend(gland_mask=truth), "gland", images, masks)
    assert result["images"] == 3
    assert result["mean_dice"] > 0.97 and result["mean_iou"] > 0.94
    nothing = evaluate_folder(FakeBackend(), "nodule", images, masks)  # no detection anywhere
    assert nothing["mean_dice"] == 0.0 and nothing["empty_predictions"] == 3


def test_evaluate_seg_command_prints_json_with_the_shipped_models(tmp_path, capsys, shipped_backend):
    truth = np.zeros((200, 300), dtype=bool)
    truth[60:140, 110:190] = True
    images, masks = _write_folder(tmp_path, truth)
    for model in ("nodule", "gland"):
        assert main(["evaluate-seg", "--model", model, "--images", str(images), "--masks", str(masks),
                     "--model-repository", str(MODEL_REPOSITORY)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["images"] == 3 and 0.0 <= out["mean_dice"] <= 1.0 and 0.0 <= out["mean_iou"] <= out["mean_dice"]
