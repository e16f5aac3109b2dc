"""Turning an exported (batch-norm-folded) ONNX model back into a trainable torch model.

An ONNX export folds each batch norm into the convolution before it, so the file holds (W, b) per
convolution and no normalisation statistics. `fold_into` loads (W, b) and makes the batch norm the
identity plus b; `recalibrate` then measures the batch norms' running statistics on frames like the
training data and sets their affine part to undo them (gamma = sqrt(var + eps), beta = mean + b): in
eval mode the model computes exactly what the file computes, and in train mode the batch statistics
stay close to the measured ones, so fine-tuning continues from the shipped model. Used by the nodule
and the gland trainers (torch; training only).
"""

from __future__ import annotations

from typing import Callable

import torch


def fold_into(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Load a folded (W, b) into conv + bn: the batch norm becomes the identity plus b."""
    conv.weight.data.copy_(weight)
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.data.fill_(1.0)
    bn.bias.data.copy_(bias)


def recalibrate(model: torch.nn.Module, folded: dict[torch.nn.BatchNorm2d, torch.Tensor], batch: torch.Tensor,
                output: Callable[[object], torch.Tensor]) -> float:
    """Re-estimate each folded batch norm on `batch` (see the module doc); returns the largest change of
    `output(model(batch))` it caused (should be ~0)."""
    sums: dict[torch.nn.BatchNorm2d, list[torch.Tensor]] = {bn: [] for bn in folded}

    def record(bn: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor], _output: torch.Tensor) -> None:
        x = inputs[0].double()
        sums[bn].append(torch.stack([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3))]))

    hooks = [bn.register_forward_hook(record) for bn in folded]
    model.eval()
    with torch.no_grad():
        reference = output(model(batch))
        for hook in hooks:
            hook.remove()
        for bn, b in folded.items():
            mean, square = torch.stack(sums[bn]).mean(dim=0)
            var = (square - mean * mean).clamp_min(1e-6).float()
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var)
            bn.weight.data.copy_(torch.sqrt(var + bn.eps))
            bn.bias.data.copy_(mean.float() + b)
        return float((output(model(batch)) - reference).abs().max())
