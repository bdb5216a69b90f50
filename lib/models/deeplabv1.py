"""Stage-3 DeepLab-v1 on ResNet-38 (SEAM's segmentation codebase; docs/METHOD.md section 6).

::

    z   = conv6 of the ResNet-38 backbone                      (N, 4096w, h, w), h = ceil(H/8)
    z   = ReLU(bn_fov(conv_fov(z)))     conv_fov 3x3, dilation 12, padding 12, 4096w -> 512w, no bias
    z   = ReLU(bn_fov2(conv_fov2(z)))   1x1 512w -> 512w, no bias
    raw = cls_conv(Dropout(0.5)(z))     1x1 512w -> C+1 with bias     (N, C+1, h, w)
    logits = bilinear upsample of raw to (H, W), align_corners=True
    cam    = softmax(raw, dim=1)        (N, C+1, h, w), *not* upsampled (input of the FSL)

Every BatchNorm (backbone and head) has momentum 3e-4 and trains (batch statistics; the original
never calls ``train()`` on the net, so its backbone's BN-freezing override never runs). New convs:
kaiming normal (fan_out, relu); head BNs weight 1, bias 0. The original optimiser holds Conv2d
parameters only, so BatchNorm affine parameters never change; here they are created with
``requires_grad=False`` (same result, no wasted gradients). Running statistics still update.
Parameter names match the released ``deeplabv1_voc``/``deeplabv1_coco`` checkpoints
(``backbone.…``, ``conv_fov.weight``, ``bn_fov.…``, ``cls_conv.bias``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.backbones.resnet38d import ResNet38d, scale_ch
from lib.models._groups import conv_param_groups

__all__ = ["DeepLabV1", "SegOutput", "BN_MOMENTUM"]

BN_MOMENTUM = 3e-4


class SegOutput(NamedTuple):
    """logits (N, C+1, H, W) upsampled to the input; cam (N, C+1, h, w) softmax of the raw output."""

    logits: torch.Tensor
    cam: torch.Tensor


class DeepLabV1(nn.Module):
    """DeepLab-v1 (LargeFOV) head on a ResNet-38 backbone.

    Args:
        num_classes: C foreground classes (output C + 1 channels).
        width: channel multiplier of backbone and head (class outputs not scaled).
        bn_momentum: momentum of every BatchNorm (3e-4 as in the original).
        train_bn_affine: give the BatchNorm weights/biases ``requires_grad=True`` (they are still
            not in :meth:`param_groups`, matching the original optimiser).
    """

    def __init__(self, num_classes: int = 20, width: float = 1.0,
                 bn_momentum: float = BN_MOMENTUM, train_bn_affine: bool = False):
        super().__init__()
        self.num_classes = num_classes
        s = lambda c: scale_ch(c, width)  # noqa: E731
        self.backbone = ResNet38d(width=width, bn_momentum=bn_momentum)
        self.conv_fov = nn.Conv2d(s(4096), s(512), 3, 1, padding=12, dilation=12, bias=False)
        self.bn_fov = nn.BatchNorm2d(s(512), momentum=bn_momentum)
        self.conv_fov2 = nn.Conv2d(s(512), s(512), 1, bias=False)
        self.bn_fov2 = nn.BatchNorm2d(s(512), momentum=bn_momentum)
        self.dropout1 = nn.Dropout(0.5)
        self.cls_conv = nn.Conv2d(s(512), num_classes + 1, 1)
        for m in (self.conv_fov, self.conv_fov2, self.cls_conv):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in (self.bn_fov, self.bn_fov2):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        # cls_conv.bias keeps nn.Conv2d's default uniform init, as in the original.
        self.from_scratch_layers = [self.conv_fov, self.conv_fov2, self.cls_conv]
        if not train_bn_affine:
            for mod in self.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    for p in mod.parameters():
                        p.requires_grad_(False)

    @property
    def trunk(self) -> ResNet38d:
        """The ResNet-38 backbone (target of ImageNet weights)."""
        return self.backbone

    def forward(self, x: torch.Tensor) -> SegOutput:
        """x (N, 3, H, W) normalised RGB -> :class:`SegOutput` (logits at (H, W), cam at stride 8)."""
        size = x.shape[-2:]
        z = self.backbone(x)
        z = F.relu(self.bn_fov(self.conv_fov(z)))
        z = F.relu(self.bn_fov2(self.conv_fov2(z)))
        raw = self.cls_conv(self.dropout1(z))
        cam = torch.softmax(raw, dim=1)
        # fp32 under autocast: the bilinear upsample's backward (atomic adds into the stride-8
        # grid) is slow and coarse in bf16; a no-op in fp32 runs.
        logits = F.interpolate(raw.float(), size, mode="bilinear", align_corners=True)
        return SegOutput(logits, cam)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """[backbone conv weights, backbone conv biases (none), new weights (conv_fov, conv_fov2,
        cls_conv), new biases (cls_conv)]; Conv2d parameters only (no BatchNorm)."""
        return conv_param_groups(self, self.from_scratch_layers)
