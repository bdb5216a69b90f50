"""ICAM networks: ``build_model(name, num_classes, width)`` for 'cam', 'aff', 'deeplabv1'.

Every model has ``param_groups()`` (four lists for :class:`lib.optim.PolyOptimizer`) and a
``trunk`` attribute (the :class:`lib.backbones.ResNet38d` that ImageNet weights go into).
"""
from __future__ import annotations

import torch.nn as nn

from lib.models.aff_net import AffinityNet
from lib.models.cam_net import CAMNet, CAMOutput
from lib.models.deeplabv1 import DeepLabV1, SegOutput

__all__ = ["build_model", "disable_dropout", "MODEL_NAMES", "CAMNet", "CAMOutput", "AffinityNet",
           "DeepLabV1", "SegOutput"]

MODEL_NAMES = ("cam", "aff", "deeplabv1")


def build_model(name: str, num_classes: int = 20, width: float = 1.0, **kw) -> nn.Module:
    """Build a network with random heads (load weights afterwards).

    name: 'cam' -> :class:`CAMNet` (kw: ``freeze``), 'aff' -> :class:`AffinityNet` (no class
    count; kw: ``freeze``), 'deeplabv1' -> :class:`DeepLabV1` (kw: ``bn_momentum``,
    ``train_bn_affine``). ``width`` scales every channel count (1.0 = the paper's network).
    Build under ``with torch.device('meta'):`` to inspect shapes without allocating memory.
    """
    if name == "cam":
        return CAMNet(num_classes=num_classes, width=width, **kw)
    if name == "aff":
        return AffinityNet(width=width, **kw)
    if name == "deeplabv1":
        return DeepLabV1(num_classes=num_classes, width=width, **kw)
    raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")


def disable_dropout(model: nn.Module) -> int:
    """Set p = 0 on every dropout layer (b6/b7 of ResNet-38 and the heads); returns how many.

    Not in the original: for short from-scratch runs (the CPU demo), where the paper's dropout
    (0.3/0.5 in b6/b7, 0.5 in the heads) slows learning from random initialisation severalfold.
    """
    n = 0
    for mod in model.modules():
        if isinstance(mod, nn.modules.dropout._DropoutNd):
            mod.p = 0.0
            n += 1
    return n
