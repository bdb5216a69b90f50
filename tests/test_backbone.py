"""ResNet-38 trunk: structure, block arithmetic, shapes, freezing."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.backbones import BottleneckBlock, ResBlock, ResNet38d, resnet38d, scale_ch

W16 = 1 / 16


def _randomize_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


def test_scale_ch():
    assert scale_ch(64, 1.0) == 64
    assert scale_ch(64, 1 / 16) == 4
    assert scale_ch(4096, 1 / 8) == 512
    assert scale_ch(3, 1 / 16) == 1          # never zero channels
    assert scale_ch(448, 1 / 16) == 28
    with pytest.raises(ValueError):
        ResNet38d(width=0)


def test_layer_hyperparameters_width1():
    with torch.device("meta"):
        m = ResNet38d()
    assert m.conv1a.in_channels == 3 and m.conv1a.out_channels == 64
    assert m.conv1a.stride == (1, 1) and m.conv1a.padding == (1, 1) and m.conv1a.bias is None
    for name in ("b2", "b3", "b4"):
        blk = getattr(m, name)
        assert blk.conv_branch2a.stride == (2, 2) and blk.conv_branch1.stride == (2, 2)
    for name in ("b2_1", "b3_2", "b4_5"):
        assert not hasattr(getattr(m, name), "conv_branch1")       # identity shortcut
    # b5: first_dilation 1, dilation 2, projection shortcut 512 -> 1024
    assert m.b5.conv_branch2a.dilation == (1, 1) and m.b5.conv_branch2a.stride == (1, 1)
    assert m.b5.conv_branch2b1.dilation == (2, 2) and m.b5.conv_branch2b1.padding == (2, 2)
    assert m.b5_1.conv_branch2a.dilation == (2, 2) and m.b5_2.conv_branch2b1.dilation == (2, 2)
    for name, p, cin, cout in (("b6", 0.3, 1024, 2048), ("b7", 0.5, 2048, 4096)):
        blk = getattr(m, name)
        assert isinstance(blk, BottleneckBlock)
        assert blk.dropout_2b1.p == p and blk.dropout_2b2.p == p
        assert blk.conv_branch2a.kernel_size == (1, 1) and blk.conv_branch2a.out_channels == cout // 4
        assert blk.conv_branch2b1.dilation == (4, 4) and blk.conv_branch2b1.out_channels == cout // 2
        assert blk.conv_branch2b2.out_channels == cout and blk.conv_branch1.in_channels == cin
    assert m.bn7.num_features == 4096
    assert all(isinstance(c, nn.Conv2d) and c.bias is None for c in m.modules()
               if isinstance(c, nn.Conv2d))
    assert m.channels == {"conv3": 256, "conv4": 512, "conv5": 1024, "conv6": 4096}
    assert m.not_training == [m.conv1a]


def test_resblock_identity_uses_raw_input():
    """Same-shape block with a zero residual branch returns its *raw* input (not the BN/ReLU)."""
    blk = ResBlock(4, 4, 4).eval()
    _randomize_bn(blk)
    nn.init.zeros_(blk.conv_branch2b1.weight)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(blk(x), x)
    out, pre = blk(x, return_preact=True)
    bn = blk.bn_branch2a
    ref = F.relu((x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
                 * bn.weight[:, None, None] + bn.bias[:, None, None])
    assert torch.allclose(pre, ref, atol=1e-6)


def test_resblock_projection_uses_activated_input():
    blk = ResBlock(4, 6, 8, stride=2).eval()
    _randomize_bn(blk)
    x = torch.randn(1, 4, 7, 7)
    out, pre = blk(x, return_preact=True)
    mid = F.relu(blk.bn_branch2b1(F.conv2d(pre, blk.conv_branch2a.weight, stride=2, padding=1)))
    ref = F.conv2d(pre, blk.conv_branch1.weight, stride=2) + F.conv2d(mid, blk.conv_branch2b1.weight, padding=1)
    assert out.shape == (1, 8, 4, 4)
    assert torch.allclose(out, ref, atol=1e-5)


def test_bottleneck_matches_formula():
    blk = BottleneckBlock(8, 2, 4, 16, dilation=4, dropout=0.3).eval()
    _randomize_bn(blk)
    x = torch.randn(1, 8, 9, 9)
    a = F.relu(blk.bn_branch2a(x))
    b = F.relu(blk.bn_branch2b1(F.conv2d(a, blk.conv_branch2a.weight)))
    b = F.relu(blk.bn_branch2b2(F.conv2d(b, blk.conv_branch2b1.weight, padding=4, dilation=4)))
    ref = F.conv2d(a, blk.conv_branch1.weight) + F.conv2d(b, blk.conv_branch2b2.weight)
    assert torch.allclose(blk(x), ref, atol=1e-5)


@pytest.mark.parametrize("hw", [(64, 64), (65, 50)])
def test_forward_shapes_width16(hw):
    torch.manual_seed(0)
    m = resnet38d(W16).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        d = m.forward_as_dict(x)
        conv6 = m(x)
    h8, w8 = (math.ceil(s / 8) for s in hw)
    h4, w4 = (math.ceil(s / 4) for s in hw)
    assert d["conv3"].shape == (2, 16, h4, w4)
    assert d["conv4"].shape == (2, 32, h8, w8)
    assert d["conv5"].shape == (2, 64, h8, w8)
    assert d["conv6"].shape == (2, 256, h8, w8)
    assert torch.equal(conv6, d["conv6"])
    assert (d["conv6"] >= 0).all() and (d["conv4"] >= 0).all()   # post-ReLU maps
    assert {k: v.shape[1] for k, v in d.items()} == m.channels


def test_default_trunk_is_not_frozen():
    m = resnet38d(W16).train()
    assert all(p.requires_grad for p in m.parameters())
    assert all(mod.training for mod in m.modules())


def test_freeze_for_weak_training():
    torch.manual_seed(0)
    m = resnet38d(W16)
    m.not_training = [m.conv1a, m.b2]
    m.freeze_for_weak_training()
    m.train()
    assert m.weak_training and m.training
    assert not m.conv1a.weight.requires_grad
    assert not any(p.requires_grad for p in m.b2.parameters())
    assert m.b2_1.conv_branch2a.weight.requires_grad and m.b7.conv_branch1.weight.requires_grad
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert m.b7.dropout_2b2.training                       # dropout still active
    # Running statistics are used, not updated, by a training-mode forward.
    before = m.b4.bn_branch2a.running_mean.clone()
    m(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, m.b4.bn_branch2a.running_mean)
    m.eval()
    m.train(True)
    assert all(not bn.training for bn in bns)


def test_bn_momentum_is_applied():
    m = resnet38d(W16, bn_momentum=3e-4)
    assert all(bn.momentum == 3e-4 for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))
