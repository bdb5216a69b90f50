"""lib/datasets: class lists, layouts, transforms and the three datasets."""

import cv2
import numpy as np
import pytest
import torch

from lib.datasets import layout as L
from lib.datasets import transforms as T
from lib.datasets.classes import COCO_CLASSES, SYNTHETIC_CLASSES, VOC_CLASSES, get_class_names
from lib.datasets.datasets import (ClassificationDataset, MultiScaleInferenceDataset,
                                   SegmentationDataset, collate_single)
from lib.io import load_cls_labels, load_label_png, save_label_png
from tools.data import make_cls_labels, make_synthetic_voc

SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "voc"
    make_synthetic_voc.main(["--out", str(root), "--num_train", "4", "--num_val", "2",
                             "--size", str(SIZE), "--seed", "1"])
    make_cls_labels.main(["--data_root", str(root)])
    return root


# ------------------------------------------------------------------------------------ classes
def test_class_lists(tmp_path):
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor"
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    # category ids 1, 67 (dining table), 90 (toothbrush) -> indices 0, 60, 79
    assert (COCO_CLASSES[0], COCO_CLASSES[60], COCO_CLASSES[79]) == ("person", "dining table", "toothbrush")
    assert get_class_names("voc", tmp_path) == VOC_CLASSES
    assert get_class_names("coco") == COCO_CLASSES
    (tmp_path / "classes.txt").write_text(" a \nb\n\n")
    assert get_class_names("voc", tmp_path) == ("a", "b")
    (tmp_path / "classes.txt").write_text("a\na\n")
    with pytest.raises(ValueError, match="duplicate"):
        get_class_names("voc", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_class_names("imagenet")


# ------------------------------------------------------------------------------------ layouts
def test_voc_layout(synth):
    lay = L.get_layout("voc", synth, "train")
    assert lay.class_names == SYNTHETIC_CLASSES and lay.num_classes == 5
    assert lay.ids() == [f"synth_{i:06d}" for i in range(4)]
    assert lay.image_path("synth_000001") == synth / "JPEGImages" / "synth_000001.jpg"
    assert lay.gt_path("synth_000001") == synth / "SegmentationClass" / "synth_000001.png"
    assert lay.list_path() == synth / "ImageSets" / "Segmentation" / "train.txt"
    assert lay.cls_labels_path() == synth / "cls_labels.npz"
    assert L.get_layout("voc", synth, "val").ids() == ["synth_000004", "synth_000005"]


def test_voc_gt_falls_back_to_aug(tmp_path):
    (tmp_path / "SegmentationClassAug").mkdir()
    (tmp_path / "SegmentationClass").mkdir()
    (tmp_path / "SegmentationClassAug" / "x.png").write_bytes(b"")
    (tmp_path / "SegmentationClass" / "y.png").write_bytes(b"")
    (tmp_path / "SegmentationClassAug" / "y.png").write_bytes(b"")
    lay = L.get_layout("voc", tmp_path, "train_aug")
    assert lay.class_names == VOC_CLASSES
    assert lay.gt_path("x") == tmp_path / "SegmentationClassAug" / "x.png"
    assert lay.gt_path("y") == tmp_path / "SegmentationClass" / "y.png"
    assert lay.gt_path("z") == tmp_path / "SegmentationClass" / "z.png"   # neither: primary path
    with pytest.raises(FileNotFoundError, match="train_aug.txt"):
        lay.ids()
    with pytest.raises(FileNotFoundError):
        L.get_layout("voc", tmp_path / "nope", "train")
    with pytest.raises(ValueError):
        L.get_layout("cityscapes", tmp_path, "train")


def test_coco_layout(tmp_path):
    (tmp_path / "train2014").mkdir()
    (tmp_path / "val2017").mkdir()
    (tmp_path / "train2014" / "COCO_train2014_000000000009.jpg").write_bytes(b"")
    (tmp_path / "val2017" / "000000000139.jpg").write_bytes(b"")
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "train2014.txt").write_text("000000000009\n25\n")
    tr = L.get_layout("coco", tmp_path, "train2014")
    assert tr.num_classes == 80 and tr.class_names == COCO_CLASSES
    assert tr.ids() == ["000000000009", "000000000025"]
    assert tr.image_path("000000000009") == tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
    assert tr.image_path("25") == tmp_path / "train2014" / "COCO_train2014_000000000025.jpg"  # 2014 style
    assert tr.gt_path("9") == tmp_path / "SegmentationClass" / "train2014" / "000000000009.png"
    assert tr.list_path() == tmp_path / "ImageSets" / "train2014.txt"
    assert tr.cls_labels_path() == tmp_path / "cls_labels_train2014.npz"
    va = L.get_layout("coco", tmp_path, "val2017")
    assert va.image_path("000000000139") == tmp_path / "val2017" / "000000000139.jpg"
    assert va.image_path("000000000001") == tmp_path / "val2017" / "000000000001.jpg"
    # a 2014-named file inside a 2017 folder is still found
    (tmp_path / "val2017" / "COCO_val2017_000000000777.jpg").write_bytes(b"")
    assert va.image_path("777") == tmp_path / "val2017" / "COCO_val2017_000000000777.jpg"


def test_lists_with_a_repeated_id_are_refused_by_every_reader(synth, tmp_path):
    """Split names and list files (stages 1-3, evaluation) all go through lib.io.read_list; for
    COCO the repeat is found after zero-padding ('25' and '000000000025' are one image)."""
    from lib.errors import UserError

    lst = synth / "ImageSets" / "Segmentation" / "val.txt"
    ids = lst.read_text().split()
    (tmp_path / "dup.txt").write_text(f"{ids[0]}\n{ids[1]}\n{ids[0]}\n")
    with pytest.raises(UserError, match=rf"dup\.txt: image id '{ids[0]}' is listed twice \(lines 1 and 3\)"):
        L.resolve_list("synthetic", synth, str(tmp_path / "dup.txt"))
    split = synth / "ImageSets" / "Segmentation" / "dupsplit.txt"
    split.write_text(f"{ids[1]}\n{ids[1]}\n")
    with pytest.raises(UserError, match=rf"dupsplit\.txt: image id '{ids[1]}' is listed twice \(lines 1 and 2\)"):
        L.resolve_list("synthetic", synth, "dupsplit")
    split.unlink()
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "train2014.txt").write_text("000000000025\n9\n25\n")
    with pytest.raises(UserError, match=r"image id '000000000025' is listed twice \(lines 1 and 3\)"):
        L.get_layout("coco", tmp_path, "train2014").ids()
    with pytest.raises(UserError, match=r"image id '000000000025' is listed twice"):
        L.resolve_list("coco", tmp_path, str(tmp_path / "ImageSets" / "train2014.txt"))


# --------------------------------------------------------------------------------- transforms
def _ramp(h, w):
    """Image whose pixels are all distinct (so a crop can be located), values 1..255 per channel."""
    v = np.arange(h * w).reshape(h, w)
    return np.stack([v % 251 + 1, (v // 251) % 251 + 1, np.full_like(v, 7)], -1).astype(np.float32)


def test_random_crop_small_image_is_placed_in_zero_container():
    img = _ramp(3, 4)
    lab = np.arange(12, dtype=np.uint8).reshape(3, 4)
    extra = np.full((3, 4, 2), 0.5, np.float32)
    offsets = set()
    for seed in range(40):
        ci, cl, ce = T.RandomCrop(6)(img, lab, extra, rng=np.random.default_rng(seed))
        assert ci.shape == (6, 6, 3) and cl.shape == (6, 6) and ce.shape == (6, 6, 2)
        ys, xs = np.nonzero(ci[..., 2] == 7)
        top, left = ys.min(), xs.min()
        assert (ys.max() - top, xs.max() - left) == (2, 3)
        np.testing.assert_array_equal(ci[top:top + 3, left:left + 4], img)
        np.testing.assert_array_equal(cl[top:top + 3, left:left + 4], lab)
        np.testing.assert_array_equal(ce[top:top + 3, left:left + 4], extra)
        outside = np.ones((6, 6), bool)
        outside[top:top + 3, left:left + 4] = False
        assert (ci[outside] == 0).all() and (cl[outside] == 255).all() and (ce[outside] == 0).all()
        offsets.add((int(top), int(left)))
    tops, lefts = {o[0] for o in offsets}, {o[1] for o in offsets}
    assert tops == {0, 1, 2, 3} and lefts == {0, 1, 2}          # every legal offset occurs


def test_random_crop_large_image_takes_a_window_and_mixed_axes():
    img = _ramp(10, 12)
    lab = (np.arange(120).reshape(10, 12) % 200).astype(np.uint8)
    windows = set()
    for seed in range(30):
        ci, cl = T.RandomCrop(5)(img, lab, rng=np.random.default_rng(seed))
        # locate the window by its first pixel (all pixels distinct)
        idx = int(np.nonzero((img[..., 0] == ci[0, 0, 0]) & (img[..., 1] == ci[0, 0, 1]))[0][0]), \
            int(np.nonzero((img[..., 0] == ci[0, 0, 0]) & (img[..., 1] == ci[0, 0, 1]))[1][0])
        y, x = idx
        np.testing.assert_array_equal(ci, img[y:y + 5, x:x + 5])
        np.testing.assert_array_equal(cl, lab[y:y + 5, x:x + 5])
        windows.add(idx)
    assert len(windows) > 10
    # tall-narrow: rows windowed, columns padded
    ci, cl = T.RandomCrop((4, 6))(img[:, :3], lab[:, :3], rng=np.random.default_rng(0))
    assert ci.shape == (4, 6, 3) and (cl == 255).sum() == 4 * 3 and (ci[..., 2] == 7).sum() == 12
    assert T.RandomCrop(5)(img, rng=np.random.default_rng(0))[1] is None


def test_flip_pairs_image_label_and_extras():
    img = _ramp(5, 7)
    lab = (img[..., 0] % 5).astype(np.uint8)
    ex = img[..., :1].copy()
    fi, fl, fe = T.RandomHorizontalFlip(1.0)(img, lab, ex, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(fi, img[:, ::-1])
    np.testing.assert_array_equal(fl, (fi[..., 0] % 5).astype(np.uint8))
    np.testing.assert_array_equal(fe[..., 0], fi[..., 0])
    same = T.RandomHorizontalFlip(0.0)(img, lab, rng=np.random.default_rng(0))
    assert same[0] is img and same[1] is lab
    flips = [T.RandomHorizontalFlip(0.5)(img, rng=np.random.default_rng(s))[0][0, 0, 0] != img[0, 0, 0]
             for s in range(40)]
    assert 5 < sum(flips) < 35


def test_normalize_denormalize_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    x = T.Normalize()(img)
    assert x.dtype == np.float32
    # hand check of one pixel: (v / 255 - mean) / std
    np.testing.assert_allclose(x[2, 3], (img[2, 3] / 255.0 - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD),
                               rtol=1e-5)
    t = T.to_chw_tensor(x)
    np.testing.assert_allclose(T.denormalize(t).permute(1, 2, 0).numpy(), img / 255.0, atol=1e-6)
    np.testing.assert_allclose(T.denormalize(t[None].double())[0].permute(1, 2, 0).numpy(), img / 255.0,
                               atol=1e-6)
    np.testing.assert_allclose(T.denormalize(x.transpose(2, 0, 1)).transpose(1, 2, 0), img / 255.0, atol=1e-6)
    assert float(T.denormalize(torch.full((3, 2, 2), 100.0)).max()) == 1.0     # clamped


def test_resize_long_range_aspect_and_nearest_labels():
    img = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    lab = np.zeros((30, 50), np.uint8)
    lab[:, 25:] = 3
    lab[0, 0] = 255
    longs = set()
    for seed in range(60):
        ri, rl = T.RandomResizeLong(20, 24)(img, lab, rng=np.random.default_rng(seed))
        h, w = ri.shape[:2]
        assert 20 <= w <= 24 and h == round(30 * w / 50) and rl.shape == (h, w) and ri.dtype == np.uint8
        assert set(np.unique(rl)) <= {0, 3, 255}
        longs.add(w)
    assert longs == {20, 21, 22, 23, 24}
    tall, _ = T.RandomResizeLong(40, 40)(img.transpose(1, 0, 2), rng=np.random.default_rng(0))
    assert tall.shape == (40, 24, 3)
    # float image and an extra probability map go through cv2 / bilinear
    ri, _, re = T.RandomResizeLong(25, 25)(img.astype(np.float32), None, np.ones((30, 50, 3), np.float32))
    assert ri.shape == (15, 25, 3) and ri.dtype == np.float32 and re.shape == (15, 25, 3)
    np.testing.assert_allclose(re, 1.0, atol=1e-6)


def test_random_scale_sizes_and_labels():
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lab = (np.arange(600).reshape(20, 30) % 4).astype(np.uint8)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        s = np.random.default_rng(seed).uniform(0.5, 1.5)
        si, sl = T.RandomScale(0.5, 1.5)(img, lab, rng=rng)
        assert si.shape == (round(20 * s), round(30 * s), 3) and sl.shape == si.shape[:2]
        assert set(np.unique(sl)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(T.nearest_resize(lab, 40, 60)[::2, ::2], lab)


@pytest.mark.parametrize("s", [1.26, 0.55])
def test_random_scale_maps_pixels_as_cv2_fx_fy(s):
    """The original's cv2.resize(.., fx=s, fy=s): output round(H s) x round(W s), label pixel d
    from source floor(d / s) (not from the scale the rounded size implies, 6/5 or 9/7 here),
    image bicubic with the factor s; the pixel_centres variant keeps the centred labels."""
    lab = np.arange(35, dtype=np.uint8).reshape(5, 7)
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    si, sl = T.RandomScale(s, s)(img, lab)
    rows = np.minimum(np.floor(np.arange(round(5 * s)) / s).astype(int), 4)
    cols = np.minimum(np.floor(np.arange(round(7 * s)) / s).astype(int), 6)
    np.testing.assert_array_equal(sl, lab[rows[:, None], cols[None, :]])
    assert si.shape == (round(5 * s), round(7 * s), 3) and si.dtype == np.uint8
    np.testing.assert_array_equal(si, cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC))
    if s == 1.26:  # the implied scale maps row 5 to source 4, the factor to 3
        assert not np.array_equal(sl, T.nearest_resize(lab, 6, 9))
    _, cl = T.RandomScale(s, s, pixel_centres=True)(img, lab)
    np.testing.assert_array_equal(cl, T.nearest_resize(lab, round(5 * s), round(7 * s)))


def test_hsv_jitter_on_gray_shifts_value_only():
    """A grey pixel has S = 0, so with no saturation jitter it stays grey whatever the hue shift,
    and its value moves by dv in {-10, ..., 10}: the original draws the value shift with Python's
    random.randint, both bounds included (21 values, each drawn ~19 times in 400 draws)."""
    gray = np.full((4, 5, 3), 120, np.uint8)
    shifts = set()
    for seed in range(400):
        out = T.HSVJitter(10, 0, 10)(gray, rng=np.random.default_rng(seed))
        assert (out == out[0, 0, 0]).all()
        shifts.add(int(out[0, 0, 0]) - 120)
    assert shifts == set(range(-10, 11))
    for seed in range(10):                                     # V is clipped at 0, not wrapped to ~250
        dark = T.HSVJitter(0, 0, 10)(np.full((2, 2, 3), 3, np.uint8), rng=np.random.default_rng(seed))
        assert dark.max() <= 13
    np.testing.assert_array_equal(T.HSVJitter(0, 0, 0)(gray), gray)


def test_hsv_jitter_draws_every_shift_with_both_bounds():
    """The original's RandomHSV draws dh, ds and dv with random.randint(-r, r): 2r + 1 values each,
    both bounds included (3 and 10 here: 7 and 21 values, each drawn ~40-140 times)."""
    jitter = T.HSVJitter(3, 10, 10)
    g = np.random.default_rng(0)
    draws = np.array([jitter.draw_shifts(g) for _ in range(1000)])
    assert set(draws[:, 0]) == set(range(-3, 4))
    assert set(draws[:, 1]) == set(range(-10, 11))
    assert set(draws[:, 2]) == set(range(-10, 11))
    assert T.HSVJitter(0, 5, 0).draw_shifts(g)[::2] == (0, 0)


def test_color_jitter_deterministic_and_identity():
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    a = T.ColorJitter()(img, rng=np.random.default_rng(3))
    b = T.ColorJitter()(img, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.uint8 and not np.array_equal(a, img)
    np.testing.assert_array_equal(T.ColorJitter(0, 0, 0, 0)(img, rng=np.random.default_rng(3)), img)


# ----------------------------------------------------------------------------------- datasets
def test_classification_dataset(synth):
    lay = L.get_layout("voc", synth, "train")
    labels = load_cls_labels(lay.cls_labels_path())
    ds = ClassificationDataset(lay, labels, crop=48, resize_long=(40, 80), seed=0)
    assert len(ds) == 4
    item = ds[1]
    assert item["id"] == "synth_000001"
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (5,) and item["label"].dtype == torch.float32
    np.testing.assert_array_equal(item["label"].numpy(), labels["synth_000001"])
    assert torch.equal(ds[1]["image"], item["image"])                    # seeded: reproducible
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], item["image"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["label"].shape == (2, 5)
    with pytest.raises(ValueError, match="no image-level label"):
        ClassificationDataset(lay, {k: v for k, v in labels.items() if k != "synth_000002"})


def test_multiscale_inference_dataset(synth):
    lay = L.get_layout("voc", synth, "val")
    labels = load_cls_labels(lay.cls_labels_path())
    ds = MultiScaleInferenceDataset(lay, labels, scales=(0.5, 1.0, 1.5))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate_single)
    item = next(iter(loader))
    assert item["id"] == "synth_000004"
    assert item["image_uint8"].shape == (SIZE, SIZE, 3) and item["image_uint8"].dtype == np.uint8
    assert [tuple(x.shape) for x in item["images"]] == [(2, 3, 32, 32), (2, 3, 64, 64), (2, 3, 96, 96)]
    x1 = item["images"][1]
    assert torch.equal(x1[1], x1[0].flip(-1))
    np.testing.assert_allclose(T.denormalize(x1[0]).permute(1, 2, 0).numpy(), item["image_uint8"] / 255.0,
                               atol=1e-6)
    assert item["label"].shape == (5,)
    noflip = MultiScaleInferenceDataset(lay, labels, scales=(1.0,), flip=False)[0]
    assert noflip["images"][0].shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError):
        collate_single([item, item])


def test_segmentation_dataset_train_and_eval(synth, tmp_path):
    lay = L.get_layout("voc", synth, "train")
    ds = SegmentationDataset(lay, crop=48, seed=0)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (48, 48) and item["label"].dtype == torch.int64
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    # large crop: the image is padded, the padding is ignore
    big = SegmentationDataset(lay, crop=200, scale=(1.0, 1.0), seed=0)[0]
    assert (big["label"] == 255).float().mean() > 0.8
    pad = (big["image"].abs().sum(0) == 0)
    assert torch.equal(pad & (big["label"] != 255), torch.zeros_like(pad))

    ev = SegmentationDataset(lay, train=False)[2]
    gt = load_label_png(lay.gt_path("synth_000002"))
    assert ev["image"].shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(ev["label"].numpy(), gt)

    # pseudo labels from a directory
    pl = tmp_path / "pl"
    for i in lay.ids():
        save_label_png(pl / f"{i}.png", np.full((SIZE, SIZE), 2, np.uint8))
    ps = SegmentationDataset(lay, label_dir=pl, train=False)[0]
    assert (ps["label"] == 2).all()
    (pl / "synth_000003.png").unlink()
    with pytest.raises(FileNotFoundError, match="synth_000003.png"):
        SegmentationDataset(lay, label_dir=pl, train=False)[3]


def test_missing_image_is_named(synth, tmp_path):
    """A listed image that does not exist fails at construction (before any training), named."""
    from lib.errors import UserError

    lay = L.get_layout("voc", synth, "train")
    with pytest.raises(UserError, match=r"JPEGImages.ghost\.jpg: image does not exist \(1 of 1"):
        ClassificationDataset(lay, {"ghost": np.zeros(5, np.float32)}, crop=32, ids=["ghost"], seed=0)
    with pytest.raises(UserError, match="ghost"):
        SegmentationDataset(lay, train=False, ids=["ghost"])
