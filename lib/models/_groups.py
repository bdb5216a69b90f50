"""Optimiser parameter groups shared by the three networks (docs/METHOD.md sections 3, 5, 6)."""
from __future__ import annotations

import torch.nn as nn


def conv_param_groups(model: nn.Module, new_layers: list[nn.Module]) -> list[list[nn.Parameter]]:
    """The original's ``get_parameter_groups`` over ``nn.Conv2d`` modules only.

    Returns four lists: [pretrained conv weights, pretrained conv biases, new-layer weights,
    new-layer biases] (the optimiser gives them lr x1, x2, x10, x20). Parameters with
    ``requires_grad=False`` (frozen layers) and every non-conv parameter (BatchNorm) are left out.
    """
    new_ids = {id(m) for m in new_layers}
    groups: list[list[nn.Parameter]] = [[], [], [], []]
    for mod in model.modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        new = id(mod) in new_ids
        if mod.weight.requires_grad:
            groups[2 if new else 0].append(mod.weight)
        if mod.bias is not None and mod.bias.requires_grad:
            groups[3 if new else 1].append(mod.bias)
    return groups
