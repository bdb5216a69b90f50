"""MXNet .params reader, key renaming, converter CLI and weight loading."""
import json
import math
import struct

import numpy as np
import pytest
import torch

from lib.errors import UserError
from lib.backbones import resnet38d
from lib.models import build_model
from lib.mxnet_params import (
    convert_mxnet_state_dict,
    load_mxnet_as_torch,
    mxnet_to_torch_key,
    read_mxnet_params,
    write_mxnet_params,
)
from lib.weights import load_checkpoint, load_imagenet_weights
from tools.data.convert_mxnet_params import main as convert_main

W16 = 1 / 16


@pytest.fixture(scope="module")
def fixture_paths(shared_dir):
    d = shared_dir / "fixtures"
    return d / "resnet38d_w16_mxnet.params", d / "resnet38d_w16_mxnet_expected.json"


@pytest.fixture(scope="module")
def expected(fixture_paths):
    with open(fixture_paths[1]) as f:
        return json.load(f)


# --------------------------------------------------------------- hand-built files (no writer)
def _header(n):
    return struct.pack("<QQQ", 0x112, 0, n)


def _names(names):
    out = struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n)) + n.encode()
    return out


def _v2(arr, flag):
    return (struct.pack("<IiI", 0xF993FAC9, 0, arr.ndim) + struct.pack(f"<{arr.ndim}q", *arr.shape)
            + struct.pack("<iii", 1, 0, flag) + arr.tobytes())


def test_reads_hand_built_v2_v1_and_legacy_files(tmp_path):
    a = np.arange(6, dtype="<f8").reshape(2, 3) / 7
    b = np.array([-3, 5, 1 << 20], dtype="<i4")
    c = np.array([[1.5, -2.25]], dtype="<f2")
    d = np.array([7, 250], dtype="u1")
    e = np.arange(4, dtype="<f4")
    v1 = struct.pack("<II", 0xF993FAC8, 1) + struct.pack("<q", 4) + struct.pack("<iii", 1, 0, 0) + e.tobytes()
    legacy = struct.pack("<I", 1) + struct.pack("<I", 4) + struct.pack("<iii", 1, 0, 0) + e.tobytes()
    blob = (_header(6) + _v2(a, 1) + _v2(b, 4) + _v2(c, 2) + _v2(d, 3) + v1 + legacy
            + _names(["arg:a", "aux:b", "c", "d", "v1", "legacy"]))
    p = tmp_path / "hand.params"
    p.write_bytes(blob)
    got = read_mxnet_params(p)
    assert list(got) == ["arg:a", "aux:b", "c", "d", "v1", "legacy"]
    for name, ref in (("arg:a", a), ("aux:b", b), ("c", c), ("d", d), ("v1", e), ("legacy", e)):
        assert got[name].dtype == ref.dtype.newbyteorder("=") and got[name].shape == ref.shape
        assert np.array_equal(got[name], ref)


def test_writer_roundtrip(tmp_path):
    arrays = {"arg:x": np.random.default_rng(0).standard_normal((3, 2, 1, 1)).astype(np.float32),
              "aux:y": np.array([1, 2], np.int64)}
    for version in (0, 1, 2):
        p = tmp_path / f"rt{version}.params"
        write_mxnet_params(p, arrays, version=version)
        got = read_mxnet_params(p)
        assert list(got) == list(arrays)
        assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in arrays.items())


# --------------------------------------------------------------- the shared fixture
def test_fixture_layout_and_names(fixture_paths, expected):
    raw = read_mxnet_params(fixture_paths[0])
    assert len(raw) == len(expected) + 2
    assert sorted(k for k in raw if "linear1000" in k) == ["arg:linear1000_bias", "arg:linear1000_weight"]
    for key, info in expected.items():
        assert info["mx"] in raw
        assert mxnet_to_torch_key(info["mx"]) == key


def test_fixture_converted_values(fixture_paths, expected):
    state = load_mxnet_as_torch(fixture_paths[0])
    assert list(state) == list(expected)
    for key, info in expected.items():
        t = state[key]
        assert t.dtype == torch.float32
        assert list(t.shape) == info["shape"], key
        assert t.reshape(-1)[0].item() == info["first"], key
        s = t.double().sum().item()
        assert math.isclose(s, info["sum"], rel_tol=1e-5, abs_tol=1e-4), (key, s, info["sum"])


def test_fixture_loads_strictly_into_width16_trunk(fixture_paths):
    state = load_mxnet_as_torch(fixture_paths[0])
    trunk = resnet38d(W16)
    trunk.load_state_dict(state, strict=True)
    assert torch.equal(trunk.b4_3.bn_branch2a.running_var, state["b4_3.bn_branch2a.running_var"])


# --------------------------------------------------------------- key renaming
@pytest.mark.parametrize("mx, key", [
    ("arg:conv1a_weight", "conv1a.weight"),
    ("arg:res2a_branch1_weight", "b2.conv_branch1.weight"),
    ("arg:res4b3_branch2b1_weight", "b4_3.conv_branch2b1.weight"),
    ("arg:bn5b2_branch2a_gamma", "b5_2.bn_branch2a.weight"),
    ("arg:bn6a_branch2b2_beta", "b6.bn_branch2b2.bias"),
    ("aux:bn7a_branch2b1_moving_mean", "b7.bn_branch2b1.running_mean"),
    ("aux:bn3b1_branch2a_moving_var", "b3_1.bn_branch2a.running_var"),
    ("arg:bn7_gamma", "bn7.weight"),
    ("aux:bn7_moving_var", "bn7.running_var"),
    ("bn7_beta", "bn7.bias"),
    ("arg:linear1000_weight", None),
    ("linear1000_bias", None),
])
def test_key_renaming(mx, key):
    assert mxnet_to_torch_key(mx) == key


@pytest.mark.parametrize("bad", ["arg:fc8_weight", "arg:res4x_branch1_weight",
                                 "arg:bn4a_branch2a_foo", "arg:res4a_branch1_bias", "data"])
def test_key_renaming_rejects_unknown(bad):
    with pytest.raises(ValueError, match="unrecognised|unexpected"):
        mxnet_to_torch_key(bad)


def test_duplicate_target_key_rejected():
    x = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="both map to"):
        convert_mxnet_state_dict({"arg:bn7_gamma": x, "bn7_gamma": x})


# --------------------------------------------------------------- malformed files
@pytest.mark.parametrize("cut", [0.0, 5, 20, 40, 90, 0.5, -30, -1])
def test_truncated_file(fixture_paths, tmp_path, cut):
    blob = fixture_paths[0].read_bytes()
    n = int(len(blob) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(blob) + cut)
    p = tmp_path / "cut.params"
    p.write_bytes(blob[:n])
    with pytest.raises(ValueError, match="truncated") as err:
        read_mxnet_params(p)
    assert str(p) in str(err.value)
    if n:
        assert "byte" in str(err.value) and str(n) in str(err.value)   # names the file size


def _mutated(fixture_paths, tmp_path, offset, data, extra=b""):
    blob = bytearray(fixture_paths[0].read_bytes())
    blob[offset:offset + len(data)] = data
    p = tmp_path / "bad.params"
    p.write_bytes(bytes(blob) + extra)
    return p


@pytest.mark.parametrize("offset, data, msg", [
    (0, struct.pack("<Q", 0x113), "list magic"),
    (24, struct.pack("<I", 0xDEADBEEF), "unknown NDArray magic"),
    (28, struct.pack("<i", 1), "storage type"),
    (76, struct.pack("<i", 42), "type flag 42"),
    (16, struct.pack("<Q", 10**12), "array count"),
])
def test_malformed_file(fixture_paths, tmp_path, offset, data, msg):
    p = _mutated(fixture_paths, tmp_path, offset, data)
    with pytest.raises(ValueError, match=msg) as err:
        read_mxnet_params(p)
    assert str(p) in str(err.value) and "byte" in str(err.value)


def test_trailing_bytes_and_name_count(fixture_paths, tmp_path):
    p = _mutated(fixture_paths, tmp_path, 0, b"", extra=b"\0\0\0")
    with pytest.raises(ValueError, match="trailing"):
        read_mxnet_params(p)
    p = tmp_path / "names.params"
    e = np.zeros(2, "<f4")
    p.write_bytes(_header(1) + _v2(e, 0) + _names(["a", "b"]))
    with pytest.raises(ValueError, match="name count 2 differs"):
        read_mxnet_params(p)
    p.write_bytes(_header(1) + _v2(e, 0) + _names([]))
    with pytest.raises(ValueError, match="unnamed"):
        read_mxnet_params(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mxnet_params(tmp_path / "nope.params")


# --------------------------------------------------------------- CLI and weight loading
def test_convert_cli_and_pth_loading(fixture_paths, tmp_path, capsys):
    out = tmp_path / "sub" / "resnet38d_w16.pth"
    assert convert_main([str(fixture_paths[0]), str(out)]) == 0
    assert "191 tensors" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == [out.name]      # no temp files left
    state = torch.load(out, weights_only=True)
    ref = load_mxnet_as_torch(fixture_paths[0])
    assert list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
    # The .pth feeds load_imagenet_weights like the .params does.
    model = build_model("aff", width=W16)
    report = load_imagenet_weights(model, out)
    assert len(report.loaded) == 191 and not report.missing and not report.unexpected
    assert torch.equal(model.b5_1.conv_branch2a.weight, ref["b5_1.conv_branch2a.weight"])


def test_convert_cli_errors(tmp_path):
    with pytest.raises((UserError, OSError), match="not found"):
        convert_main([str(tmp_path / "missing.params"), str(tmp_path / "o.pth")])
    bad = tmp_path / "bad.params"
    bad.write_bytes(b"\x12\x01\0\0")
    with pytest.raises((UserError, OSError), match="truncated"):
        convert_main([str(bad), str(tmp_path / "o.pth")])
    assert not (tmp_path / "o.pth").exists()


def test_load_imagenet_weights_into_models(fixture_paths):
    ref = load_mxnet_as_torch(fixture_paths[0])
    torch.manual_seed(0)
    cam = build_model("cam", num_classes=20, width=W16)
    fc8_before = cam.fc8.weight.clone()
    report = load_imagenet_weights(cam, fixture_paths[0])
    assert sorted(report.loaded) == sorted(ref) and not report.missing and not report.unexpected
    sd = cam.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
    assert torch.equal(cam.fc8.weight, fc8_before)                   # head untouched
    assert not cam.conv1a.weight.requires_grad                       # freezing survives loading
    seg = build_model("deeplabv1", num_classes=20, width=W16)
    load_imagenet_weights(seg, fixture_paths[0])
    assert torch.equal(seg.backbone.bn7.running_mean, ref["bn7.running_mean"])


def test_load_imagenet_weights_width_mismatch(fixture_paths):
    model = build_model("cam", num_classes=20, width=1 / 8)
    with pytest.raises(ValueError, match=r"conv1a\.weight: file \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        load_imagenet_weights(model, fixture_paths[0])


def test_load_imagenet_weights_missing_and_unexpected(fixture_paths, tmp_path):
    ref = load_mxnet_as_torch(fixture_paths[0])
    partial = {k: v for k, v in ref.items() if not k.startswith("b7.")}
    partial["fc8.weight"] = torch.zeros(21, 256, 1, 1)
    p = tmp_path / "partial.pth"
    torch.save({"module." + k: v for k, v in partial.items()}, p)
    model = build_model("cam", num_classes=20, width=W16)
    with pytest.raises(ValueError, match=r"missing 16 .*unexpected 1 \['fc8.weight'\]"):
        load_imagenet_weights(model, p)
    report = load_imagenet_weights(model, p, strict=False)
    assert report.unexpected == ["fc8.weight"] and len(report.missing) == 16  # b7: 3 BNs x 4 + 4 convs
    assert torch.equal(model.b6.conv_branch1.weight, ref["b6.conv_branch1.weight"])


def test_load_checkpoint(tmp_path):
    p = tmp_path / "ck.pth"
    torch.save({"module.a.weight": torch.ones(2), "b": torch.zeros(1)}, p)
    sd = load_checkpoint(p)
    assert list(sd) == ["a.weight", "b"] and torch.equal(sd["a.weight"], torch.ones(2))
    torch.save([1, 2, 3], p)
    with pytest.raises(ValueError, match="not a state_dict"):
        load_checkpoint(p)
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"ck\.pth: cannot read torch checkpoint: the file is text \('garbage'"):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pth")
