"""Grad-CAM++ on the image embedding (the Eq. 15 location atlas: test_location_atlas.py)."""

import pytest
import torch

from llnm.model.config import preset
from llnm.model.explain import grad_cam_pp
from llnm.model.tmdl import TMDL, dummy_inputs


def test_grad_cam_pp_has_the_token_layout():
    torch.manual_seed(0)
    model = TMDL(preset("tiny"))
    x = dummy_inputs(model.config, batch=2)
    cam = grad_cam_pp(model, x["images"], x["text_states"], x["text_mask"], x["clinical"])
    assert cam.shape == (2, model.config.image_tokens)
    assert float(cam.min()) == pytest.approx(0.0) and float(cam.max()) == pytest.approx(1.0)
    again = grad_cam_pp(model, x["images"], x["text_states"], x["text_mask"], x["clinical"])
    torch.testing.assert_close(cam, again)
    assert all(p.grad is None for p in model.parameters())

