"""Stage 3: multi-scale/flip inference, CRF post-processing, training and inference CLIs, panels."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from lib.errors import UserError
from lib.io import load_label_png, read_list, save_cam, save_label_png
from stage3_seg.infer_seg import multiscale_flip_probs, probs_to_label

from helpers import ENV, make_tiny_voc, run  # noqa: E402  (tests/helpers.py)

ROOT = Path(__file__).resolve().parents[1]
WIDTH = "0.0625"


# ----------------------------------------------------------------------------- inference maths

class RampNet(nn.Module):
    """Content-free logits that depend on the horizontal position only.

    For an input of width w: u = linspace(0, 1, w); logits = (0, k u, -k u / 2) per column.
    Not flip-equivariant, so a missing or wrong un-flip changes the average.
    """

    def __init__(self, k: float = 4.0):
        super().__init__()
        self.k = k

    def forward(self, x):
        n, _, h, w = x.shape
        u = torch.linspace(0, 1, w) if w > 1 else torch.zeros(1)
        logits = torch.stack([torch.zeros(w), self.k * u, -0.5 * self.k * u])
        return logits[None, :, None, :].expand(n, 3, h, w).clone(), None


def _softmax_np(z):
    e = np.exp(z - z.max(0))
    return e / e.sum(0)


def _ramp_reference(h, w, scales, flip, k=4.0):
    """Independent expectation: each scale's probabilities at its own columns u' = linspace(0,1,w'),
    bilinear (align_corners=True) resize back = linear interpolation at u = j / (w - 1)."""
    u = np.linspace(0, 1, w)
    acc = np.zeros((3, w))
    n = 0
    for s in scales:
        ws = max(1, round(w * s))
        us = np.linspace(0, 1, ws)
        ps = _softmax_np(np.stack([np.zeros(ws), k * us, -0.5 * k * us]))
        views = [u] + ([1 - u] if flip else [])  # the mirrored pass, un-flipped, samples at 1 - u
        for pos in views:
            acc += np.stack([np.interp(pos, us, ps[c]) for c in range(3)])
            n += 1
    return np.broadcast_to((acc / n)[:, None, :], (3, h, w))


@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((1.0,), True),
                                          ((0.5, 1.0, 1.5), True), ((0.75, 1.25), False)])
def test_multiscale_flip_average_matches_reference(scales, flip):
    h, w = 9, 17
    image = torch.randn(1, 3, h, w)
    got = multiscale_flip_probs(RampNet(), image, scales, flip)
    assert got.shape == (3, h, w)
    np.testing.assert_allclose(got.numpy(), _ramp_reference(h, w, scales, flip), atol=1e-5)
    np.testing.assert_allclose(got.sum(0).numpy(), 1.0, atol=1e-5)


def test_flip_average_is_mirror_symmetric_for_a_position_only_net():
    got = multiscale_flip_probs(RampNet(), torch.zeros(1, 3, 5, 12), (1.0,), True)
    np.testing.assert_allclose(got.numpy(), got.flip(-1).numpy(), atol=1e-6)
    no_flip = multiscale_flip_probs(RampNet(), torch.zeros(1, 3, 5, 12), (1.0,), False)
    assert not np.allclose(no_flip.numpy(), no_flip.flip(-1).numpy(), atol=1e-3)


class PixelNet(nn.Module):
    """logits = the input pixels themselves (3 channels): flip-equivariant and content-dependent."""

    def forward(self, x):
        return x


def test_content_dependent_net_with_flip_gives_the_plain_softmax():
    image = torch.randn(1, 3, 6, 7)
    got = multiscale_flip_probs(PixelNet(), image, (1.0,), True)
    np.testing.assert_allclose(got.numpy(), torch.softmax(image[0], 0).numpy(), atol=1e-6)


def test_multiscale_rejects_bad_input():
    with pytest.raises(ValueError, match="1, 3, H, W"):
        multiscale_flip_probs(PixelNet(), torch.zeros(2, 3, 4, 4), (1.0,), True)
    with pytest.raises(ValueError, match="positive"):
        multiscale_flip_probs(PixelNet(), torch.zeros(1, 3, 4, 4), (0.0,), True)


# ----------------------------------------------------------------------------- CRF post-processing

def _two_halves(h=24, w=24):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    img[:, w // 2:] = (30, 30, 200)
    lab = np.ones((h, w), np.int64)
    lab[:, w // 2:] = 2
    probs = np.full((3, h, w), 0.05, np.float32)
    probs[1][lab == 1] = 0.9
    probs[2][lab == 2] = 0.9
    return img, lab, probs


def test_crf_keeps_the_labels_of_a_confident_input():
    img, lab, probs = _two_halves()
    np.testing.assert_array_equal(probs_to_label(probs, img, use_crf=True), lab)
    np.testing.assert_array_equal(probs_to_label(probs, img, use_crf=False), lab)


def test_crf_is_applied_and_removes_an_isolated_weak_outlier():
    img, lab, probs = _two_halves()
    probs[:, 10, 5] = (0.1, 0.4, 0.5)  # a weak vote for class 2 inside the red class-1 half
    assert probs_to_label(probs, img, use_crf=False)[10, 5] == 2
    np.testing.assert_array_equal(probs_to_label(probs, img, use_crf=True), lab)


# ----------------------------------------------------------------------------- CLIs on synthetic data

def _run(args, timeout=120):
    return run(*args, timeout=timeout)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_tiny_voc(tmp_path_factory.mktemp("s3") / "voc", cls_labels=False)


def _train_args(root, session):
    # The synthetic GT serves as pseudo labels; 5 classes + background.
    return ["-m", "stage3_seg.train_seg", "--config", "voc/config_voc2012.py",
            "--pseudo_gt", str(root / "SegmentationClass"), "--session_name", str(session),
            "--data_root", str(root), "--set", "NUM_CLASSES=6", "--set", "WORKERS=0",
            "--backbone_width", WIDTH, "--crop_size", "64", "--batch_size", "2", "--max_steps", "2",
            "--device", "cpu", "--threads", "1", "--image_every", "1"]


def _fresh_model():
    from lib.models import build_model

    return build_model("deeplabv1", num_classes=5, width=float(WIDTH))


def _load(path):
    from lib.weights import load_checkpoint

    return load_checkpoint(path)


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    session = tmp_path_factory.mktemp("s3exp") / "ckpts" / "final"
    r = _run(_train_args(synth, session))
    return session, r


def test_two_step_cpu_training_writes_a_strictly_loadable_checkpoint(trained):
    session, r = trained
    assert "RANDOM initialisation" in r.stderr  # no ImageNet weights on the test machine
    # 3e-4 x 2 iterations from random init: the BN statistics cannot settle, and it says so.
    assert "WARNING: BN_MOMENTUM=0.0003 over 2 iterations" in r.stderr
    raw = torch.load(f"{session}.pth", weights_only=True, map_location="cpu")
    assert not any(k.startswith("module.") for k in raw)
    model = _fresh_model()
    model.load_state_dict(raw, strict=True)
    assert raw["cls_conv.weight"].shape[0] == 6
    # the BN running statistics moved (momentum 3e-4 over two steps): the net did run in train mode
    assert not torch.equal(raw["bn_fov.running_mean"], torch.zeros_like(raw["bn_fov.running_mean"]))
    run = json.loads(Path(f"{session}.config.json").read_text())
    assert run["config"]["NUM_CLASSES"] == 6 and run["config"]["ITERATIONS"] == 2
    assert run["config"]["BACKBONE_WIDTH"] == 0.0625 and run["world_size"] == 1
    assert Path(f"{session}.state.pth").is_file()
    assert list(Path(f"{session}_tb").glob("events.out.tfevents.*"))


def test_no_bn_momentum_warning_when_the_statistics_can_settle(synth, tmp_path):
    r = _run([*_train_args(synth, tmp_path / "final"), "--set", "BN_MOMENTUM=0.2",
              "--max_steps", "30"])
    assert "random initialisation" in r.stderr.lower() and "BN_MOMENTUM" not in r.stderr


def test_torchrun_two_processes_produce_the_same_checkpoint_keys(synth, trained, tmp_path):
    session, _ = trained
    ddp = tmp_path / "ddp"
    args = _train_args(synth, ddp)
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
          "--weights", "none"], timeout=180)
    a, b = _load(f"{session}.pth"), _load(f"{ddp}.pth")
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert json.loads(Path(f"{ddp}.config.json").read_text())["world_size"] == 2
    # inference under torchrun: each rank takes its shard of the val ids
    out = tmp_path / "val"
    r = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "stage3_seg.infer_seg", "--weights", f"{ddp}.pth", "--out_pred", str(out),
              "--scales", "1.0", "--no-flip", "--no-crf", "--crf_workers", "0", "--threads", "1",
              "--device", "cpu"], timeout=180)
    assert "0 of 1 images already done (rank 0 of 2)" in r.stdout
    ids = read_list(synth / "ImageSets" / "Segmentation" / "val.txt")
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(ids)


def test_missing_explicit_weights_and_wrong_class_count_are_clear_errors(synth, tmp_path):
    args = _train_args(synth, tmp_path / "x")
    r = subprocess.run([sys.executable, *args, "--weights", str(tmp_path / "nope.params")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "nope.params" in r.stderr and "Traceback" not in r.stderr
    bad = [a if a != "NUM_CLASSES=6" else "NUM_CLASSES=21" for a in args]
    r = subprocess.run([sys.executable, *bad], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "NUM_CLASSES=6" in r.stderr and "Traceback" not in r.stderr


def test_infer_writes_all_val_pngs_then_skips_them(synth, trained, tmp_path):
    session, _ = trained
    out = tmp_path / "results" / "val"
    # no --config: the run config recorded next to the weights is used
    args = ["-m", "stage3_seg.infer_seg", "--weights", f"{session}.pth", "--infer_list", "val",
            "--out_pred", str(out), "--scales", "0.5", "1.0", "--crf_workers", "1", "--threads", "1",
            "--device", "cpu", "--eval", "--eval_workers", "1", "--out_json", str(tmp_path / "r.json")]
    _run(args)
    ids = read_list(synth / "ImageSets" / "Segmentation" / "val.txt")
    assert len(ids) == 2 and sorted(p.stem for p in out.glob("*.png")) == sorted(ids)
    for i in ids:
        pred = load_label_png(out / f"{i}.png")
        assert pred.shape == load_label_png(synth / "SegmentationClass" / f"{i}.png").shape
        assert pred.max() <= 5
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["num_images"] == 2 and 0.0 <= res["miou"] <= 1.0
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    r = _run(args[:-5] + ["--no-crf"])
    assert "2 of 2 images already done" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes


def test_infer_with_config_file_uses_trained_architecture_and_matches_in_process(synth, trained, tmp_path):
    session, _ = trained
    # NUM_CLASSES and BACKBONE_WIDTH come from the run config next to the weights, not the
    # VOC config file (21 classes, width 1)
    common = ["-m", "stage3_seg.infer_seg", "--config", "voc/config_voc2012.py",
              "--weights", f"{session}.pth", "--data_root", str(synth),
              "--scales", "1.0", "--no-flip", "--threads", "1", "--device", "cpu"]
    r = _run(common + ["--out_pred", str(tmp_path / "a"), "--crf_workers", "0", "--no-crf"])
    assert "NUM_CLASSES=6 from" in r.stderr and "BACKBONE_WIDTH=0.0625 from" in r.stderr
    # an explicit architecture override wins, and a wrong one is a clear error
    r = subprocess.run([sys.executable, *common, "--out_pred", str(tmp_path / "b"),
                        "--set", "NUM_CLASSES=21"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and "NUM_CLASSES=21" in r.stderr and "Traceback" not in r.stderr
    # the same without CRF, computed in-process from the checkpoint
    from lib.datasets.transforms import Normalize, to_chw_tensor
    from lib.io import load_image
    model = _fresh_model()
    model.load_state_dict(_load(f"{session}.pth"))
    model.eval()
    for p in sorted((tmp_path / "a").glob("*.png")):
        x = to_chw_tensor(Normalize()(load_image(synth / "JPEGImages" / f"{p.stem}.jpg")))[None]
        expected = multiscale_flip_probs(model, x, (1.0,), False).argmax(0).numpy()
        np.testing.assert_array_equal(load_label_png(p), expected)


# ----------------------------------------------------------------------------- visualisation

def test_overlay_label_blends_foreground_and_draws_boundaries():
    from lib.io import voc_palette
    from lib.overlay import overlay_label

    img = np.full((6, 6, 3), 100, np.uint8)
    lab = np.zeros((6, 6), np.uint8)
    lab[2:5, 2:5] = 1
    out = overlay_label(img, lab, alpha=0.5, contours=True)
    np.testing.assert_array_equal(out[0, 0], img[0, 0])  # background keeps the image
    expected = np.rint(0.5 * 100 + 0.5 * voc_palette()[1].astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out[3, 3], expected)    # interior, no boundary there
    # boundary = pixels whose right or lower neighbour differs, drawn in white
    for r, c in ((2, 1), (1, 2), (4, 4), (4, 2), (2, 4)):
        assert (out[r, c] == 255).all(), (r, c)
    np.testing.assert_array_equal(out[2, 2], expected)
    plain = overlay_label(img, lab, alpha=0.5, contours=False)
    np.testing.assert_array_equal(plain[2, 2], expected)


def test_visualize_cli_writes_panels_and_grid(synth, tmp_path):
    from tools.visualize import TITLE_H, main

    ids = read_list(synth / "ImageSets" / "Segmentation" / "val.txt")
    cam_dir = tmp_path / "cam"
    for i in ids:
        save_cam(cam_dir / f"{i}.npz", [0, 3], np.random.default_rng(0).random((2, 64, 64)))
    pred_dir = tmp_path / "pred"
    for i in ids:
        save_label_png(pred_dir / f"{i}.png", np.zeros((64, 64), np.uint8))
    out = tmp_path / "vis"
    main(["--image_dir", str(synth / "JPEGImages"), "--cam_dir", str(cam_dir),
          "--label_dirs", str(pred_dir), str(synth / "SegmentationClass"), "--names", "pred", "gt",
          "--list", str(synth / "ImageSets" / "Segmentation" / "val.txt"), "--out", str(out),
          "--grid"])
    for i in ids:
        from PIL import Image
        with Image.open(out / f"{i}.png") as im:
            # 4 tiles of 64 px and 3 gaps of 4 px; a title strip on top
            assert im.size == (4 * 64 + 3 * 4, 64 + TITLE_H)
    assert (out / "grid.png").is_file()
    with pytest.raises((UserError, OSError), match="does not exist"):
        main(["--image_dir", str(synth / "JPEGImages"), "--label_dirs", str(tmp_path / "cam"),
              "--ids", ids[0], "--out", str(tmp_path / "vis2")])
