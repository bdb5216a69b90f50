"""Wide ResNet-38 ("resnet38d", Wu et al.), the trunk of every ICAM network (docs/METHOD.md section 2).

Layout (nominal channel counts at ``width=1.0``; spatial stride after each stage in brackets)::

    conv1a  3x3  3 -> 64                                   [1]
    b2      ResBlock(64, 128, 128, stride 2), b2_1, b2_2     [2]
    b3      ResBlock(128, 256, 256, stride 2), b3_1, b3_2    [4]
    b4      ResBlock(256, 512, 512, stride 2), b4_1..b4_5    [8]
    b5      ResBlock(512, 512, 1024, first_dilation 1, dilation 2), b5_1, b5_2 (dilation 2)
    b6      Bottleneck(1024 -> 512 -> 1024 -> 2048, dilation 4, dropout 0.3)
    b7      Bottleneck(2048 -> 1024 -> 2048 -> 4096, dilation 4, dropout 0.5)
    bn7     BatchNorm(4096), ReLU -> conv6                   [8]

A feature map at stride 8 has ``ceil(ceil(ceil(H/2)/2)/2)`` rows (every strided conv uses
``padding = dilation`` so ``out = ceil(in/2)``).

Module names reproduce the released checkpoints' parameter names exactly (``b4_3.conv_branch2b1.weight``
...). ``width`` scales every channel count except the RGB input: ``scale_ch(c, w) =
max(1, round(c*w))`` (``width=1/16`` gives the test fixture's 4/8/16/... channels).

Weak-supervision mode (stages 1 and 2, :meth:`ResNet38d.freeze_for_weak_training`): every BatchNorm
runs in eval mode with frozen affine parameters, and the modules in ``not_training`` (``conv1a``,
plus ``b2``, ``b2_1``, ``b2_2`` for the CAM/affinity nets) have frozen weights. The original did
this inside an overridden ``train()``; here the ``requires_grad`` flags are set once when freezing
(so optimiser groups built afterwards skip them) and :meth:`ResNet38d.train` keeps the BatchNorms
in eval mode whenever the model is put into training mode.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["scale_ch", "ResBlock", "BottleneckBlock", "ResNet38d", "resnet38d"]


def scale_ch(c: int, width: float) -> int:
    """Channel count ``c`` scaled by ``width``: ``max(1, int(round(c * width)))``."""
    return max(1, int(round(c * width)))


class ResBlock(nn.Module):
    """Pre-activation residual block with two 3x3 convolutions.

    ``a = ReLU(bn_branch2a(x))``; ``branch1 = conv_branch1(a)`` (1x1, ``stride``) when the shape
    changes, else ``x`` (the raw, non-activated input); ``branch2 = conv_branch2b1(ReLU(
    bn_branch2b1(conv_branch2a(a))))`` with ``conv_branch2a`` 3x3 (``stride``, dilation
    ``first_dilation``) and ``conv_branch2b1`` 3x3 (``dilation``). Output ``branch1 + branch2``.
    (N, in_ch, H, W) -> (N, out_ch, H', W'), ``H' = ceil(H / stride)``.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1, bn_momentum: float = 0.1):
        super().__init__()
        if first_dilation is None:
            first_dilation = dilation
        self.same_shape = in_ch == out_ch and stride == 1
        # Registration order fixes the state_dict order of the released checkpoints.
        self.bn_branch2a = nn.BatchNorm2d(in_ch, momentum=bn_momentum)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch, momentum=bn_momentum)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        """Returns the block output, or ``(output, ReLU(bn_branch2a(x)))`` when ``return_preact``."""
        a = F.relu(self.bn_branch2a(x))
        branch1 = x if self.same_shape else self.conv_branch1(a)
        b = self.conv_branch2a(a)
        b = self.conv_branch2b1(F.relu(self.bn_branch2b1(b)))
        out = branch1 + b
        return (out, a) if return_preact else out


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck block (b6, b7).

    ``a = ReLU(bn_branch2a(x))``; ``branch1 = conv_branch1(a)`` (1x1; always present because the
    channel count changes); ``branch2 = conv_branch2b2(drop(ReLU(bn_branch2b2(conv_branch2b1(
    drop(ReLU(bn_branch2b1(conv_branch2a(a)))))))))`` with 1x1 ``in->mid1``, 3x3 dilated
    ``mid1->mid2``, 1x1 ``mid2->out`` and ``Dropout2d(dropout)`` (nominally mid1 = out/4,
    mid2 = out/2). (N, in_ch, H, W) -> (N, out_ch, H, W).
    """

    def __init__(self, in_ch: int, mid1: int, mid2: int, out_ch: int, stride: int = 1,
                 dilation: int = 1, dropout: float = 0.0, bn_momentum: float = 0.1):
        super().__init__()
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch, momentum=bn_momentum)
        self.conv_branch2a = nn.Conv2d(in_ch, mid1, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid1, momentum=bn_momentum)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(mid1, mid2, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(mid2, momentum=bn_momentum)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(mid2, out_ch, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        a = F.relu(self.bn_branch2a(x))
        branch1 = x if self.same_shape else self.conv_branch1(a)
        b = self.conv_branch2a(a)
        b = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(b))))
        b = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(b))))
        out = branch1 + b
        return (out, a) if return_preact else out


class ResNet38d(nn.Module):
    """Wide ResNet-38 trunk, output stride 8.

    Args:
        width: channel multiplier (1.0 = the ImageNet model; smaller for tests/smoke runs).
        bn_momentum: momentum of every BatchNorm (torch convention; DeepLab-v1 uses 3e-4).

    Attributes:
        channels: dict of the channel counts of ``conv3``/``conv4``/``conv5``/``conv6``.
        not_training: modules whose weights are frozen by :meth:`freeze_for_weak_training`
            (``[conv1a]`` here; the CAM and affinity nets extend it with ``b2, b2_1, b2_2``).
    """

    def __init__(self, width: float = 1.0, bn_momentum: float = 0.1):
        super().__init__()
        if not width > 0:
            raise ValueError(f"ResNet38d: width must be > 0, got {width}")
        self.width = float(width)
        s = lambda c: scale_ch(c, width)  # noqa: E731
        m = dict(bn_momentum=bn_momentum)

        self.conv1a = nn.Conv2d(3, s(64), 3, padding=1, bias=False)

        self.b2 = ResBlock(s(64), s(128), s(128), stride=2, **m)
        self.b2_1 = ResBlock(s(128), s(128), s(128), **m)
        self.b2_2 = ResBlock(s(128), s(128), s(128), **m)

        self.b3 = ResBlock(s(128), s(256), s(256), stride=2, **m)
        self.b3_1 = ResBlock(s(256), s(256), s(256), **m)
        self.b3_2 = ResBlock(s(256), s(256), s(256), **m)

        self.b4 = ResBlock(s(256), s(512), s(512), stride=2, **m)
        self.b4_1 = ResBlock(s(512), s(512), s(512), **m)
        self.b4_2 = ResBlock(s(512), s(512), s(512), **m)
        self.b4_3 = ResBlock(s(512), s(512), s(512), **m)
        self.b4_4 = ResBlock(s(512), s(512), s(512), **m)
        self.b4_5 = ResBlock(s(512), s(512), s(512), **m)

        self.b5 = ResBlock(s(512), s(512), s(1024), stride=1, first_dilation=1, dilation=2, **m)
        self.b5_1 = ResBlock(s(1024), s(512), s(1024), dilation=2, **m)
        self.b5_2 = ResBlock(s(1024), s(512), s(1024), dilation=2, **m)

        self.b6 = BottleneckBlock(s(1024), s(512), s(1024), s(2048), dilation=4, dropout=0.3, **m)
        self.b7 = BottleneckBlock(s(2048), s(1024), s(2048), s(4096), dilation=4, dropout=0.5, **m)
        self.bn7 = nn.BatchNorm2d(s(4096), momentum=bn_momentum)

        self.channels = {"conv3": s(256), "conv4": s(512), "conv5": s(1024), "conv6": s(4096)}
        self.not_training: list[nn.Module] = [self.conv1a]
        self._weak_training = False

    # ------------------------------------------------------------------ forward
    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N,3,H,W) normalised RGB -> features (h8 = ceil(H/8) etc.):

        ``conv3`` (N, 256w, H/4, W/4) = ReLU(b4.bn_branch2a(.)), the pre-activation of b4;
        ``conv4`` (N, 512w, h8, w8) = pre-activation of b5; ``conv5`` (N, 1024w, h8, w8) =
        pre-activation of b6; ``conv6`` (N, 4096w, h8, w8) = ReLU(bn7(b7 output)).
        """
        x = self.conv1a(x)
        x = self.b2_2(self.b2_1(self.b2(x)))
        x = self.b3_2(self.b3_1(self.b3(x)))
        x, conv3 = self.b4(x, return_preact=True)
        x = self.b4_5(self.b4_4(self.b4_3(self.b4_2(self.b4_1(x)))))
        x, conv4 = self.b5(x, return_preact=True)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6(x, return_preact=True)
        x = self.b7(x)
        conv6 = F.relu(self.bn7(x))
        return {"conv3": conv3, "conv4": conv4, "conv5": conv5, "conv6": conv6}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N,3,H,W) -> conv6 (N, 4096w, ceil(H/8), ceil(W/8))."""
        return self.forward_as_dict(x)["conv6"]

    # ------------------------------------------------------------------ freezing
    @property
    def weak_training(self) -> bool:
        """True once :meth:`freeze_for_weak_training` was called (BatchNorms pinned to eval)."""
        return self._weak_training

    def freeze_for_weak_training(self) -> "ResNet38d":
        """Stage-1/2 regime: freeze the weights of ``not_training`` and every BatchNorm.

        Sets ``requires_grad=False`` on the parameters of every module in ``not_training`` and on
        every BatchNorm's weight/bias, and pins all BatchNorms (trunk and heads) to eval mode
        (running statistics are used and never updated), also across later ``train()`` calls.
        Returns ``self``.
        """
        for layer in self.not_training:
            for p in layer.parameters():
                p.requires_grad_(False)
        for mod in self.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                for p in mod.parameters():
                    p.requires_grad_(False)
        self._weak_training = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet38d":
        """``nn.Module.train``; in weak-training mode every BatchNorm stays in eval mode."""
        super().train(mode)
        if self._weak_training:
            for mod in self.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        return self

    @property
    def trunk(self) -> "ResNet38d":
        """The ResNet-38 part that ImageNet weights are loaded into (the module itself)."""
        return self


def resnet38d(width: float = 1.0, **kw) -> ResNet38d:
    """Build a :class:`ResNet38d` (random init; load ImageNet weights with ``lib.weights``)."""
    return ResNet38d(width=width, **kw)
