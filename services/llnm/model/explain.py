"""Grad-CAM++ (Chattopadhay et al. 2018) on TMDL's image embedding (torch side).

The patch-embedding maps of x_l, x_t and x_m are the last spatial activations before attention, so
Grad-CAM++ is taken there, for the LLNM logit. The result has the token layout of the rollout
(3 x g x g, flattened to 3n), so `llnm.features.heatmap.tokens_to_heatmap` maps either onto a view.
The runtime uses attention rollout (exported in the ONNX graph); this one is for evaluation tools.
"""

from __future__ import annotations

import torch

from llnm.model.tmdl import TMDL


def grad_cam_pp(model: TMDL, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                clinical: torch.Tensor) -> torch.Tensor:
    """(B, 3n) Grad-CAM++ importance of the image tokens for the LLNM logit, scaled to [0, 1]."""
    model.eval()
    activations: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        activations.append(output)

    hooks = [embed.register_forward_hook(keep) for embed in model.patch_embed]
    try:
        with torch.enable_grad():
            logit, _, _, _ = model(images, text_states, text_mask, clinical)
            model.zero_grad(set_to_none=True)
            logit.sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
        model.zero_grad(set_to_none=True)
    maps = []
    for a in activations:
        g = a.grad
        g2, g3 = g.pow(2), g.pow(3)
        denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True)
        maps.append(torch.relu((weights * a).sum(dim=1)).flatten(1).detach())
    cam = torch.cat(maps, dim=1)
    low = cam.min(dim=1, keepdim=True).values
    high = cam.max(dim=1, keepdim=True).values
    return (cam - low) / (high - low).clamp(min=1e-12)
