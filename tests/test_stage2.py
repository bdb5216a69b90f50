"""Stage 2: AffinityDataset labels, train_aff (single process and torchrun/gloo), infer_aff.

Stage-1 artifacts are fabricated from the synthetic ground truth (CAM = smoothed one-hot of the
GT classes, CRF = smoothed one-hot of the GT with background), so stage 2 runs without stage 1.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lib.affinity import extract_pair_labels
from lib.datasets import get_layout
from lib.datasets import resolve_list
from lib.datasets.affinity_dataset import AffinityDataset, pool_maps
from lib.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from lib.io import load_label_png, save_cam, save_crf
from lib.models import build_model
from lib.random_walk import random_walk_labels
from lib.weights import load_checkpoint

from helpers import ENV, make_tiny_voc, run  # noqa: E402  (tests/helpers.py)

ROOT = Path(__file__).resolve().parents[1]
WIDTH = "0.0625"


def onehot_scores(label: np.ndarray, keys: np.ndarray, hi=0.9) -> np.ndarray:
    """(len(keys), H, W) smoothed one-hot of ``label`` over the class ids ``keys``."""
    oh = (label[None] == keys[:, None, None]).astype(np.float32)
    return oh * hi + (1 - hi) / len(keys)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Synthetic VOC root + fabricated CAM / CRF artifacts for every id, and an odd-size image."""
    tmp = tmp_path_factory.mktemp("stage2")
    voc = make_tiny_voc(tmp / "voc")
    # An image whose size is no multiple of 8 (infer_aff pads it), listed in a list *file*.
    rng = np.random.default_rng(0)
    odd = np.zeros((50, 61), np.uint8)
    odd[10:35, 20:50] = 2
    img = (rng.integers(0, 60, (50, 61, 3)) + 120 * (odd > 0)[..., None]).astype(np.uint8)
    Image.fromarray(img).save(voc / "JPEGImages" / "odd_0.jpg", quality=95)
    Image.fromarray(odd, mode="L").save(voc / "SegmentationClass" / "odd_0.png")
    (tmp / "odd.txt").write_text("odd_0\n")

    ids = [*get_layout("voc", voc, "train").ids(), *get_layout("voc", voc, "val").ids(), "odd_0"]
    gts = {}
    for i in ids:
        gt = load_label_png(get_layout("voc", voc, "train").gt_path(i)).astype(np.int64)
        gt[gt == 255] = 0
        gts[i] = gt
        fg = np.unique(gt[gt > 0]) - 1
        save_cam(tmp / "cam" / f"{i}.npz", fg, onehot_scores(gt, fg + 1, 0.8) if len(fg) else
                 np.zeros((0,) + gt.shape, np.float32))
        keys = np.concatenate([[0], fg + 1])
        # la (alpha 2) keeps more background than ha (alpha 4), as the real CRF maps do.
        save_crf(tmp / "crf" / "alpha_2.0" / f"{i}.npz", keys, onehot_scores(gt, keys, 0.9))
        save_crf(tmp / "crf" / "alpha_4.0" / f"{i}.npz", keys, onehot_scores(gt, keys, 0.6))
    return {"tmp": tmp, "voc": voc, "gts": gts, "la": tmp / "crf" / "alpha_2.0",
            "ha": tmp / "crf" / "alpha_4.0", "cam": tmp / "cam"}


def _fake_layout(root: Path, image: np.ndarray, la, la_keys, ha, ha_keys, image_id="hand"):
    """One image + its two CRF artifacts in a VOC-layout folder."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=100)
    (root / "ImageSets" / "Segmentation" / "hand.txt").write_text(f"{image_id}\n")
    save_crf(root / "la" / f"{image_id}.npz", la_keys, la)
    save_crf(root / "ha" / f"{image_id}.npz", ha_keys, ha)
    return get_layout("voc", root, "hand")


def test_pool_maps_matches_loop():
    x = np.random.default_rng(1).random((16, 24, 3)).astype(np.float32)
    ref = np.zeros((3, 2, 3), np.float32)
    for c in range(3):
        for i in range(2):
            for j in range(3):
                ref[c, i, j] = x[8 * i:8 * i + 8, 8 * j:8 * j + 8, c].mean()
    np.testing.assert_allclose(pool_maps(x), ref, rtol=1e-6)
    with pytest.raises(ValueError):
        pool_maps(x[:15])


def test_label_rules_hand_made(tmp_path):
    """8-px column blocks: fg/fg -> class, bg/bg -> 0, bg/fg -> void, fg/bg -> 0 (ha wins)."""
    H = W = 48
    blocks = [  # (la [bg, c2, c4], ha [bg, c2, c4]) per pair of 8-px columns
        ([0.1, 0.8, 0.1], [0.1, 0.8, 0.1]),   # cols 0-15  -> class id 3 (keys [0, 3, 5])
        ([0.8, 0.1, 0.1], [0.9, 0.05, 0.05]), # cols 16-31 -> background
        ([0.5, 0.1, 0.4], [0.2, 0.1, 0.7]),   # cols 32-39 -> la says bg: void
        ([0.1, 0.2, 0.7], [0.6, 0.2, 0.2]),   # cols 40-47 -> la says class 5, ha says bg: 0
    ]
    spans = [(0, 16), (16, 32), (32, 40), (40, 48)]
    la = np.zeros((3, H, W), np.float32)
    ha = np.zeros((3, H, W), np.float32)
    for (l, h), (a, b) in zip(blocks, spans):
        la[:, :, a:b] = np.array(l, np.float32)[:, None, None]
        ha[:, :, a:b] = np.array(h, np.float32)[:, None, None]
    keys = np.array([0, 3, 5])
    layout = _fake_layout(tmp_path, np.full((H, W, 3), 100, np.uint8), la, keys, ha, keys)
    ds = AffinityDataset(layout, None, tmp_path / "la", tmp_path / "ha", crop=48,
                         color_jitter=False, flip=False, seed=0)
    item = ds[0]
    assert item["id"] == "hand" and item["image"].shape == (3, 48, 48)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (6, 6)
    expected_row = [3, 3, 0, 0, 255, 0]
    assert item["label"].tolist() == [expected_row] * 6
    # The same maps with a flip: the label row mirrors.
    flipped = [AffinityDataset(layout, None, tmp_path / "la", tmp_path / "ha", crop=48,
                               color_jitter=False, flip=True, seed=s)[0]["label"][0].tolist()
               for s in range(8)]
    assert expected_row[::-1] in flipped and expected_row in flipped
    assert all(r in (expected_row, expected_row[::-1]) for r in flipped)


@pytest.mark.parametrize("seed", range(4))
def test_padding_is_void_and_black(tmp_path, seed):
    """A 40x40 image in a 64 crop: cells without an image pixel are void, the rest labelled."""
    H = W = 40
    keys = np.array([0, 2])
    la = np.stack([np.full((H, W), 0.2), np.full((H, W), 0.8)]).astype(np.float32)
    ha = np.stack([np.full((H, W), 0.1), np.full((H, W), 0.9)]).astype(np.float32)
    layout = _fake_layout(tmp_path, np.full((H, W, 3), 128, np.uint8), la, keys, ha, keys)
    item = AffinityDataset(layout, None, tmp_path / "la", tmp_path / "ha", crop=64,
                           color_jitter=False, flip=False, seed=seed)[0]
    img = item["image"].numpy()
    black = ((0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
    is_pad = np.all(np.abs(img - black[:, None, None]) < 1e-4, axis=0)
    rows, cols = np.nonzero(~is_pad)
    top, left = rows.min(), cols.min()
    assert (rows.max() - top + 1, cols.max() - left + 1) == (H, W) and (~is_pad).sum() == H * W
    grey = Normalize()(np.full((1, 1, 3), 128, np.uint8))[0, 0]
    np.testing.assert_allclose(img[:, top, left], grey, atol=1e-5)
    expected = np.full((8, 8), 255)
    for i in range(8):
        for j in range(8):
            if (~is_pad[8 * i:8 * i + 8, 8 * j:8 * j + 8]).any():
                expected[i, j] = 2
    assert item["label"].numpy().tolist() == expected.tolist()


@pytest.mark.parametrize("seed", range(3))
def test_resize_long_moves_maps_with_image(tmp_path, seed):
    """--resize_long (not in the original): a 40x24 image resized to long side 80 (-> 80x48)
    fills 80 rows of a 64 crop; left 24 px class 2, right part class 4; cells follow the resize."""
    H, W = 40, 24
    keys = np.array([0, 2, 4])
    la = np.zeros((3, H, W), np.float32)
    la[1, :, :12], la[2, :, 12:] = 0.9, 0.9
    la[0] = 0.05
    layout = _fake_layout(tmp_path, np.full((H, W, 3), 90, np.uint8), la, keys, la.copy(), keys)
    ds = AffinityDataset(layout, None, tmp_path / "la", tmp_path / "ha", crop=64,
                         resize_long=(80, 80), color_jitter=False, flip=False, seed=seed)
    item = ds[0]
    lab = item["label"].numpy()
    # Width 48 < 64: placed at a random column offset; every row of the crop is image (80 > 64).
    img = item["image"].numpy()
    black = ((0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
    cols = np.nonzero(~np.all(np.abs(img - black[:, None, None]) < 1e-4, axis=(0, 1)))[0]
    assert len(cols) == 48
    left = cols[0]
    assert (lab == lab[:1]).all()  # the maps do not vary along y
    for j in range(8):
        xs = np.arange(8 * j, 8 * j + 8) - left
        inside = xs[(xs >= 0) & (xs < 48)]
        n2, n4 = (inside < 24).sum(), (inside >= 24).sum()
        # bilinear maps: class 2 left of x=24, class 4 right (symmetric blend at the edge), so a
        # cell's pooled argmax follows the majority of its columns; a tie may go either way.
        expected = {255} if not len(inside) else {2} if n2 > n4 else {4} if n4 > n2 else {2, 4}
        assert lab[0, j] in expected, (j, left, lab[0])


def test_labels_match_gt_block_majority(synth):
    """With CRF maps = smoothed one-hot GT, the label of a cell = its majority GT class."""
    layout = get_layout("voc", synth["voc"], "train")
    ds = AffinityDataset(layout, None, synth["la"], synth["ha"], crop=64, color_jitter=False,
                         flip=False, seed=0)
    assert len(ds) == 4
    for k in range(len(ds)):
        item = ds[k]
        gt = synth["gts"][item["id"]]
        lab = item["label"].numpy()
        for i in range(8):
            for j in range(8):
                counts = np.bincount(gt[8 * i:8 * i + 8, 8 * j:8 * j + 8].ravel())
                top = set(np.flatnonzero(counts == counts.max()).tolist())
                # A tied majority is decided by float rounding in la vs ha: it may also be void.
                allowed = top if len(top) == 1 else top | {255}
                assert lab[i, j] in allowed, (item["id"], i, j, counts)
        bg, fg, neg = extract_pair_labels(item["label"], 5)
        assert bg.sum() > 0 and (bg + fg + neg).max() == 1


def test_dataset_errors(synth, tmp_path):
    layout = get_layout("voc", synth["voc"], "train")
    with pytest.raises(FileNotFoundError, match="ha_crf_dir"):
        AffinityDataset(layout, None, synth["la"], tmp_path / "nope")
    ds = AffinityDataset(layout, ["missing_id"], synth["la"], synth["ha"], crop=64)
    with pytest.raises(ValueError, match="missing_id.jpg: image does not exist"):
        ds.check_files()
    with pytest.raises(ValueError, match="multiple of 8"):
        AffinityDataset(layout, None, synth["la"], synth["ha"], crop=60)
    # CRF maps of the wrong size name the file.
    bad = tmp_path / "bad"
    ids = layout.ids()
    save_crf(bad / f"{ids[0]}.npz", [0], np.ones((1, 10, 10), np.float32))
    with pytest.raises(ValueError, match=ids[0]):
        AffinityDataset(layout, ids[:1], bad, bad, crop=64)[0]
    # resolve_list: split name or file.
    lay, lst = resolve_list("voc", synth["voc"], str(synth["tmp"] / "odd.txt"))
    assert lst == ["odd_0"] and lay.image_path("odd_0").is_file()
    with pytest.raises(FileNotFoundError):
        resolve_list("voc", synth["voc"], "no_such_split")


def _train_args(synth, session, extra=()):
    return ["-m", "stage2_aff.train_aff", "--data_root", str(synth["voc"]), "--train_list", "train",
            "--la_crf_dir", str(synth["la"]), "--ha_crf_dir", str(synth["ha"]), "--weights", "none",
            "--backbone_width", WIDTH, "--crop_size", "64", "--batch_size", "2", "--max_steps", "2",
            "--num_workers", "0", "--threads", "1", "--device", "cpu",
            "--session_name", str(session), *extra]


@pytest.fixture(scope="module")
def trained(synth):
    session = synth["tmp"] / "ckpt" / "aff"
    run(*_train_args(synth, session))
    return session


def test_train_single_process(trained):
    state = load_checkpoint(f"{trained}.pth")
    assert not any(k.startswith("module.") for k in state)
    model = build_model("aff", width=float(WIDTH))
    model.load_state_dict(state, strict=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # BatchNorm is frozen in stage 2: from random init the running statistics stay at 0 / 1.
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means and all((v == 0).all() for v in means)
    assert all((v == 1).all() for k, v in state.items() if k.endswith("running_var"))
    cfg = json.loads(Path(f"{trained}.config.json").read_text())
    assert cfg["max_step"] == 2 and cfg["world_size"] == 1 and cfg["num_images"] == 4
    assert Path(f"{trained}.state.pth").is_file()
    assert any(Path(f"{trained}_tb").iterdir())  # TensorBoard event file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_torchrun_two_processes(synth, trained):
    session = synth["tmp"] / "ckpt_ddp" / "aff"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nnodes", "1", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        *_train_args(synth, session)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ddp = load_checkpoint(f"{session}.pth")
    single = load_checkpoint(f"{trained}.pth")
    assert sorted(ddp) == sorted(single)
    assert all(ddp[k].shape == single[k].shape for k in ddp)
    assert json.loads(Path(f"{session}.config.json").read_text())["world_size"] == 2


def _infer(synth, trained, out, extra=(), infer_list="val"):
    from stage2_aff import infer_aff

    infer_aff.main(["--weights", f"{trained}.pth", "--data_root", str(synth["voc"]),
                    "--infer_list", infer_list, "--cam_dir", str(synth["cam"]), "--out_rw", str(out),
                    "--backbone_width", WIDTH, "--num_workers", "0", "--device", "cpu", *extra])


def test_infer_writes_valid_labels_and_skips(synth, trained, capsys):
    out = synth["tmp"] / "rw"
    run("-m", "stage2_aff.infer_aff", "--weights", f"{trained}.pth", "--data_root", str(synth["voc"]),
        "--infer_list", "val", "--cam_dir", str(synth["cam"]), "--out_rw", str(out),
        "--backbone_width", WIDTH, "--num_workers", "0", "--device", "cpu", "--threads", "1")
    ids = get_layout("voc", synth["voc"], "val").ids()
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(ids)
    for i in ids:
        lab = load_label_png(out / f"{i}.png")
        gt = synth["gts"][i]
        assert lab.shape == gt.shape
        assert set(np.unique(lab)) <= set(np.unique(gt)) | {0}
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    capsys.readouterr()
    _infer(synth, trained, out)
    assert f"{len(ids)} of {len(ids)} images already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes


def test_infer_matches_reference_chain_on_padded_image(synth, trained):
    """odd_0 (50x61, padded to 56x64): infer_aff == lib.random_walk.random_walk_labels on the
    same features, for both walk methods; --crf keeps the label set valid."""
    list_file = str(synth["tmp"] / "odd.txt")
    outs = {}
    for method in ("dense", "sparse"):
        outs[method] = synth["tmp"] / f"rw_odd_{method}"
        _infer(synth, trained, outs[method], ["--method", method], infer_list=list_file)
    dense = load_label_png(outs["dense"] / "odd_0.png")
    sparse = load_label_png(outs["sparse"] / "odd_0.png")
    assert dense.shape == (50, 61)
    np.testing.assert_array_equal(dense, sparse)

    model = build_model("aff", width=float(WIDTH))
    model.load_state_dict(load_checkpoint(f"{trained}.pth"))
    model.eval()
    image = np.asarray(Image.open(synth["voc"] / "JPEGImages" / "odd_0.jpg").convert("RGB"))
    x = torch.from_numpy(Normalize()(image).transpose(2, 0, 1).copy())
    x = F.pad(x, (0, 64 - 61, 0, 56 - 50))[None]
    with torch.no_grad():
        feats = model.forward_features(x)[0]
    with np.load(synth["cam"] / "odd_0.npz") as z:
        keys, cams = z["keys"], z["cams"]
    ref = random_walk_labels((50, 61), cams, keys, feats, alpha=6, beta=8, logt=6, method="dense")
    np.testing.assert_array_equal(dense, ref)

    crf_out = synth["tmp"] / "rw_odd_crf"
    _infer(synth, trained, crf_out, ["--crf"], infer_list=list_file)
    assert set(np.unique(load_label_png(crf_out / "odd_0.png"))) <= {0, 2}


def test_infer_no_class_is_background(synth, trained, tmp_path):
    cam_dir = tmp_path / "cam"
    i = get_layout("voc", synth["voc"], "val").ids()[0]
    save_cam(cam_dir / f"{i}.npz", np.zeros(0, np.int64), np.zeros((0, 64, 64), np.float32))
    from stage2_aff import infer_aff

    (tmp_path / "one.txt").write_text(f"{i}\n")
    infer_aff.main(["--weights", f"{trained}.pth", "--data_root", str(synth["voc"]),
                    "--infer_list", str(tmp_path / "one.txt"), "--cam_dir", str(cam_dir),
                    "--out_rw", str(tmp_path / "rw"), "--backbone_width", WIDTH, "--num_workers", "0",
                    "--device", "cpu"])
    lab = load_label_png(tmp_path / "rw" / f"{i}.png")
    assert lab.shape == (64, 64) and not lab.any()


def test_infer_torchrun_shards_ids(synth, trained):
    """2 processes (gloo): every id written once, identical to the single-process labels."""
    single = synth["tmp"] / "rw_single"
    _infer(synth, trained, single, infer_list="train")
    out = synth["tmp"] / "rw_ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nnodes", "1", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        "-m", "stage2_aff.infer_aff", "--weights", f"{trained}.pth",
                        "--data_root", str(synth["voc"]), "--infer_list", "train",
                        "--cam_dir", str(synth["cam"]), "--out_rw", str(out),
                        "--backbone_width", WIDTH, "--num_workers", "0", "--device", "cpu",
                        "--threads", "1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ids = get_layout("voc", synth["voc"], "train").ids()
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(ids)
    for i in ids:
        np.testing.assert_array_equal(load_label_png(out / f"{i}.png"),
                                      load_label_png(single / f"{i}.png"))
