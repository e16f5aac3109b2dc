"""Grad-CAM++ (Chattopadhay et al. 2018) on TMDL's image-token embedding (torch side).

The feature maps are the image tokens as they leave the last bidirectional block (B, 3n, hidden),
i.e. the image embedding after it has attended to the report and clinical tokens, laid out as three
g x g grids (x_l, x_t, x_m). The raw patch embedding is a linear map of the pixels whose signed
activations make Grad-CAM++ all but vanish; the fused token states carry the class evidence.
The result has the token layout of the rollout (3n), so `llnm.features.heatmap.tokens_to_heatmap`
maps either onto a view. The runtime uses attention rollout (exported in the ONNX graph); this one
is for evaluation tools.
"""

from __future__ import annotations

import torch

from llnm.model.tmdl import TMDL


def grad_cam_pp(model: TMDL, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                clinical: torch.Tensor) -> torch.Tensor:
    """(B, 3n) Grad-CAM++ importance of the image tokens for the LLNM logit, scaled to [0, 1]."""
    model.eval()
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output[0].retain_grad()
        captured.append(output[0])

    hook = model.bi_blocks[-1].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logit, _, _, _ = model(images, text_states, text_mask, clinical)
            model.zero_grad(set_to_none=True)
            logit.sum().backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    a = captured[0].detach().transpose(1, 2)  # (B, hidden, 3n): channels x positions
    g = captured[0].grad.transpose(1, 2)
    g2, g3 = g.pow(2), g.pow(3)
    n = model.config.tokens_per_image
    maps = []
    for k in range(3):  # one CAM per feature image, its own spatial sum in alpha
        ak, gk, g2k, g3k = (t[:, :, k * n:(k + 1) * n] for t in (a, g, g2, g3))
        denominator = 2 * g2k + ak.sum(dim=2, keepdim=True) * g3k
        alpha = g2k / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * torch.relu(gk)).sum(dim=2, keepdim=True)
        maps.append(torch.relu((weights * ak).sum(dim=1)))
    cam = torch.cat(maps, dim=1)
    low = cam.min(dim=1, keepdim=True).values
    high = cam.max(dim=1, keepdim=True).values
    return (cam - low) / (high - low).clamp(min=1e-12)
