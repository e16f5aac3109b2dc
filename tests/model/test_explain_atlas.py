"""Grad-CAM++ on the image embedding, and the Eq. 15 location risk atlas."""

import numpy as np
import pytest
import torch

from .conftest import ellipse
from llnm.model.atlas import LocationAtlas, build_atlas, location_risk
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


def test_atlas_learns_where_the_positive_nodules_sit(tmp_path):
    rng = np.random.default_rng(0)
    views = []
    for i in range(12):
        shape = (80, 100)
        ry, rx = rng.uniform(25, 32), rng.uniform(35, 45)
        gland = ellipse(shape, 40, 50, ry, rx)
        positive = i % 2
        cx = 50 - 0.5 * rx if positive else 50 + 0.5 * rx  # positives on the left of the lobe
        views.append((gland, ellipse(shape, 40, cx, 6, 6) & gland, positive))
    atlas = build_atlas(views, size=32)
    assert atlas.risk[:, :12].max() > 0.7 and atlas.risk[:, 20:].min() < 0.3
    path = tmp_path / "atlas.npz"
    atlas.save(path)
    atlas = LocationAtlas.load(path)
    gland = ellipse((90, 120), 45, 60, 30, 45)
    left = location_risk(atlas, gland, ellipse((90, 120), 45, 38, 6, 6))
    right = location_risk(atlas, gland, ellipse((90, 120), 45, 82, 6, 6))
    assert left > 0.6 > 0.4 > right
