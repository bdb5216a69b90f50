"""CAM net, AffinityNet, DeepLab-v1: released key names, shapes, forward math, freezing, groups."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib.models import AffinityNet, CAMNet, CAMOutput, DeepLabV1, build_model
from lib.models.cam_net import pcm

W16 = 1 / 16
ENTRIES = {  # released checkpoint -> (model name, num_classes)
    "cam_voc": ("cam", 20), "cam_coco": ("cam", 80), "aff": ("aff", 20),
    "deeplabv1_voc": ("deeplabv1", 20), "deeplabv1_coco": ("deeplabv1", 80),
}


@pytest.fixture(scope="module")
def released(shared_dir):
    with open(shared_dir / "reference" / "released_state_dict_keys.json") as f:
        return json.load(f)


def _meta_model(entry):
    name, c = ENTRIES[entry]
    with torch.device("meta"):
        return build_model(name, num_classes=c)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_state_dict_matches_released_checkpoint(released, entry):
    model = _meta_model(entry)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(released[entry].items())          # same keys, order and shapes
    # A checkpoint with exactly these tensors loads strictly.
    fake = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32,
                           device="meta") for k, s in released[entry].items()}
    model.load_state_dict(fake, strict=True, assign=True)
    # Independent parameter count: every non-buffer tensor of the released checkpoint.
    buffers = {k for k, _ in model.named_buffers()}
    expected = sum(math.prod(s) for k, s in released[entry].items() if k not in buffers)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_build_model_unknown():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("pspnet")


# --------------------------------------------------------------------------- CAM net
def _slow_pcm(cam, feat, eps=1e-5):
    """Loop reference of the PCM on one image: cam (K, hw), feat (D, hw)."""
    hw = feat.shape[1]
    g = feat / (feat.norm(dim=0, keepdim=True) + eps)
    a = torch.zeros(hw, hw, dtype=feat.dtype)
    for i in range(hw):
        for j in range(hw):
            a[i, j] = max(0.0, float((g[:, i] * g[:, j]).sum()))
    col = a.sum(dim=0)
    out = torch.zeros_like(cam)
    for j in range(hw):
        for i in range(hw):
            out[:, j] += cam[:, i] * a[i, j] / (col[j] + eps)
    return out


def test_pcm_matches_loop_reference():
    torch.manual_seed(0)
    cam = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    feat = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    out = pcm(cam, feat)
    for n in range(2):
        ref = _slow_pcm(cam[n].reshape(3, -1), feat[n].reshape(5, -1))
        assert torch.allclose(out[n].reshape(3, -1), ref, atol=1e-10)
    # A constant CAM is preserved up to the eps of the column normalisation.
    const = torch.full((1, 1, 3, 4), 2.0, dtype=torch.float64)
    assert torch.allclose(pcm(const, feat[:1].abs()), const, atol=1e-4)


@pytest.fixture(scope="module")
def cam_net():
    torch.manual_seed(0)
    return CAMNet(num_classes=20, width=W16)


def test_cam_forward_shapes_and_formulas(cam_net):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    cam_net.eval()
    with torch.no_grad():
        out = cam_net(x)
        d = cam_net.forward_as_dict(x)
        logits = cam_net.fc8(d["conv6"])
        x_s = F.interpolate(x, (8, 8), mode="bilinear", align_corners=True)
        feat = cam_net.f9(torch.cat([x_s, F.relu(cam_net.f8_3(d["conv4"])),
                                     F.relu(cam_net.f8_4(d["conv5"]))], 1))
    assert isinstance(out, CAMOutput)
    assert out.pred.shape == (2, 21)
    for t in (out.cam, out.cam_logits, out.cam_rv, out.cam_rv_logits):
        assert t.shape == (2, 21, 8, 8)
    assert torch.allclose(out.cam_logits, logits, atol=1e-5)
    assert torch.allclose(out.cam, torch.softmax(logits, 1), atol=1e-6)
    assert torch.allclose(out.cam.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    assert torch.allclose(out.cam_rv.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    for n in range(2):
        ref = _slow_pcm(logits[n].reshape(21, -1).double(), feat[n].reshape(feat.shape[1], -1).double())
        assert torch.allclose(out.cam_rv_logits[n].reshape(21, -1).double(), ref, atol=1e-4)
    q = out.cam.amax(dim=(2, 3)) * (1 - 1e-3)
    assert torch.allclose(out.pred, torch.log(q + 1e-3) - torch.log(1 - q), atol=1e-5)
    cam, cam_rv = cam_net.forward_cam(x)
    assert torch.allclose(cam, out.cam, atol=1e-6) and torch.allclose(cam_rv, out.cam_rv, atol=1e-6)


def test_cam_head_widths():
    with torch.device("meta"):
        m = CAMNet(num_classes=80, width=1 / 8)
    assert (m.fc8.in_channels, m.fc8.out_channels) == (512, 81)
    assert (m.f8_3.in_channels, m.f8_3.out_channels) == (64, 8)
    assert (m.f8_4.in_channels, m.f8_4.out_channels) == (128, 16)
    assert (m.f9.in_channels, m.f9.out_channels) == (3 + 8 + 16, 24)


def test_cam_gradients_flow_through_pcm_logits_not_trunk_features(cam_net):
    """The PCM sees undetached logits (ICAM) but detached conv4/conv5 (SEAM)."""
    cam_net.train()
    cam_net.zero_grad()
    torch.manual_seed(2)
    out = cam_net(torch.randn(1, 3, 32, 32))
    out.cam_rv_logits.sum().backward()
    assert cam_net.fc8.weight.grad is not None and cam_net.fc8.weight.grad.abs().sum() > 0
    assert cam_net.f9.weight.grad is not None
    # Cut the logits path with a hook: what is left (the PCM affinity path) must stop at the
    # detached conv4/conv5, so the trunk gets no gradient while f8_3/f8_4/f9 do.
    cam_net.zero_grad()
    hook = cam_net.fc8.register_forward_hook(lambda mod, i, o: o.detach())
    try:
        cam_net(torch.randn(1, 3, 32, 32)).cam_rv_logits.square().sum().backward()
    finally:
        hook.remove()
    assert cam_net.f8_3.weight.grad is not None and cam_net.f8_4.weight.grad is not None
    assert cam_net.f9.weight.grad is not None and cam_net.fc8.weight.grad is None
    assert all(p.grad is None for p in cam_net.b4_5.parameters())
    cam_net.eval()


def test_cam_frozen_layers_and_groups(cam_net):
    m = cam_net
    m.train()
    frozen = [m.conv1a.weight] + [p for b in (m.b2, m.b2_1, m.b2_2) for p in b.parameters()]
    assert all(not p.requires_grad for p in frozen)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert m.dropout7.training and m.b3.conv_branch2a.weight.requires_grad
    groups = m.param_groups()
    assert len(groups) == 4
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for p in groups[2]} == {id(m.fc8.weight), id(m.f8_3.weight), id(m.f8_4.weight),
                                          id(m.f9.weight)}
    assert groups[1] == [] and groups[3] == []
    assert id(m.conv1a.weight) not in ids and id(m.b3.conv_branch1.weight) in {id(p) for p in groups[0]}


def test_cam_unfrozen_option():
    m = build_model("cam", num_classes=3, width=W16, freeze=False).train()
    assert m.conv1a.weight.requires_grad
    assert all(bn.training for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))


# --------------------------------------------------------------------------- AffinityNet
@pytest.fixture(scope="module")
def aff_net():
    torch.manual_seed(0)
    return AffinityNet(width=W16).eval()


def test_aff_features_and_pair_affinities(aff_net):
    from lib.affinity import neighbour_pairs

    torch.manual_seed(3)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        f = aff_net.forward_features(x)
        aff = aff_net(x)
        dense = aff_net(x, to_dense=True)
        d = aff_net.forward_as_dict(x)
        ref_f = F.elu(aff_net.f9(torch.cat([F.elu(aff_net.f8_3(d["conv4"])),
                                            F.elu(aff_net.f8_4(d["conv5"])),
                                            F.elu(aff_net.f8_5(d["conv6"]))], 1)))
    assert f.shape == (2, 28, 12, 12)
    assert torch.allclose(f, ref_f, atol=1e-6)
    fr, to = neighbour_pairs(12, 12, radius=5)
    assert aff.shape == (2, fr.numel()) and fr.numel() > 0
    flat = f.reshape(2, 28, -1)
    for p in range(0, fr.numel(), 97):     # spot-check pairs against the formula
        ref = torch.exp(-(flat[:, :, fr[p]] - flat[:, :, to[p]]).abs().mean(1))
        assert torch.allclose(aff[:, p], ref, atol=1e-6)
    assert ((aff > 0) & (aff <= 1)).all()
    assert dense.shape == (2, 144, 144)
    assert torch.allclose(dense, dense.transpose(1, 2))
    assert torch.equal(torch.diagonal(dense, dim1=1, dim2=2), torch.ones(2, 144))
    assert torch.equal(dense[:, fr, to], aff)
    assert int((dense > 0).sum()) == 2 * (2 * fr.numel() + 144)


def test_aff_frozen_layers_and_groups(aff_net):
    m = aff_net
    m.train()
    assert not m.conv1a.weight.requires_grad and not m.b2_2.conv_branch2b1.weight.requires_grad
    assert all(not bn.training for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))
    groups = m.param_groups()
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for p in groups[2]} == {id(getattr(m, n).weight) for n in ("f8_3", "f8_4", "f8_5", "f9")}
    assert m.f9.in_channels == 4 + 8 + 16 and m.f9.out_channels == 28
    m.eval()


# --------------------------------------------------------------------------- DeepLab-v1
def test_deeplab_forward_and_cam():
    torch.manual_seed(0)
    m = DeepLabV1(num_classes=20, width=W16).eval()
    raw = {}
    m.cls_conv.register_forward_hook(lambda mod, i, o: raw.setdefault("o", o))
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        logits, cam = m(x)
    assert raw["o"].shape == (2, 21, 8, 6)
    assert logits.shape == (2, 21, 64, 48) and cam.shape == (2, 21, 8, 6)
    assert torch.allclose(cam, torch.softmax(raw["o"], 1), atol=1e-6)
    assert torch.allclose(logits, F.interpolate(raw["o"], (64, 48), mode="bilinear", align_corners=True),
                          atol=1e-5)
    assert m.conv_fov.dilation == (12, 12) and m.conv_fov.padding == (12, 12)
    assert m.cls_conv.bias is not None and m.conv_fov.bias is None
    assert isinstance(m.dropout1, nn.Dropout) and m.dropout1.p == 0.5


def test_deeplab_bn_trains_and_groups():
    torch.manual_seed(0)
    m = build_model("deeplabv1", num_classes=20, width=W16).train()
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert all(bn.training and bn.momentum == 3e-4 for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert m.trunk is m.backbone and m.backbone.conv1a.weight.requires_grad
    x = torch.randn(2, 3, 32, 32)
    bn = m.backbone.bn7
    before = bn.running_mean.clone()
    captured = {}
    bn.register_forward_hook(lambda mod, i, o: captured.setdefault("in", i[0].detach()))
    m(x)
    batch_mean = captured["in"].mean(dim=(0, 2, 3))
    assert torch.allclose(bn.running_mean, (1 - 3e-4) * before + 3e-4 * batch_mean, atol=1e-6)
    groups = m.param_groups()
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for p in groups[2]} == {id(m.conv_fov.weight), id(m.conv_fov2.weight), id(m.cls_conv.weight)}
    assert [id(p) for p in groups[3]] == [id(m.cls_conv.bias)] and groups[1] == []
    assert len(groups[0]) == sum(1 for mod in m.backbone.modules() if isinstance(mod, nn.Conv2d))


def test_disable_dropout_zeroes_every_dropout_layer():
    from lib.models import build_model, disable_dropout

    torch.manual_seed(0)
    m = build_model("deeplabv1", num_classes=5, width=0.0625)
    n = sum(isinstance(x, torch.nn.modules.dropout._DropoutNd) for x in m.modules())
    assert n >= 3  # b6, b7 and the head
    assert disable_dropout(m) == n
    m.train()
    for mod in m.modules():  # BN in train mode still changes outputs; freeze it to compare
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(m(x).logits, m(x).logits)  # no randomness left in train mode
