"""tools/data/make_synthetic_voc.py: layout, determinism, label PNGs, void band, XML consistency."""
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.errors import UserError
from lib.datasets.classes import SYNTHETIC_CLASSES
from lib.io import load_label_png, read_list, voc_palette
from tools.data import make_synthetic_voc as msv

SIZE = 64


def _gen(out, n_train=8, n_val=4, size=SIZE, seed=0, *extra):
    msv.main(["--out", str(out), "--num_train", str(n_train), "--num_val", str(n_val),
              "--size", str(size), "--seed", str(seed), *extra])
    return Path(out)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp("synth") / "voc", 10, 4)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_lists_and_classes(synth):
    train = read_list(synth / "ImageSets/Segmentation/train.txt")
    val = read_list(synth / "ImageSets/Segmentation/val.txt")
    assert train == [f"synth_{i:06d}" for i in range(10)]
    assert val == [f"synth_{i:06d}" for i in range(10, 14)]
    assert read_list(synth / "ImageSets/Segmentation/train_aug.txt") == train
    assert not set(train) & set(val)
    assert tuple((synth / "classes.txt").read_text().split()) == SYNTHETIC_CLASSES
    for i in train + val:
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"),
                         ("SegmentationClassAug", "png"), ("Annotations", "xml")):
            assert (synth / sub / f"{i}.{ext}").is_file(), (sub, i)
        with Image.open(synth / "JPEGImages" / f"{i}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (SIZE, SIZE)
        assert (synth / "SegmentationClass" / f"{i}.png").read_bytes() == \
            (synth / "SegmentationClassAug" / f"{i}.png").read_bytes()
    assert len(list((synth / "JPEGImages").iterdir())) == 14


def test_label_png_palette_and_values(synth):
    for p in sorted((synth / "SegmentationClass").glob("*.png")):
        with Image.open(p) as im:
            assert im.mode == "P" and im.size == (SIZE, SIZE)
            pal = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(pal[:256], voc_palette()[: len(pal)])
        lab = load_label_png(p)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 4, 5, 255}
        assert (lab == 0).any() and ((lab >= 1) & (lab <= 5)).any()


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = _files(_gen(tmp_path / "a", 3, 2, SIZE, 7))
    b = _files(_gen(tmp_path / "b", 3, 2, SIZE, 7))
    assert a == b
    c = _files(_gen(tmp_path / "c", 3, 2, SIZE, 8))
    assert a.keys() == c.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != c[k] for k in jpgs)
    # Image i depends on (seed, i) only: a longer set starts with the same images.
    d = _files(_gen(tmp_path / "d", 4, 0, SIZE, 7))
    assert d["JPEGImages/synth_000002.jpg"] == a["JPEGImages/synth_000002.jpg"]


def test_overwrite_required_and_replaces(tmp_path):
    out = _gen(tmp_path / "o", 3, 1)
    with pytest.raises((UserError, OSError), match="--overwrite"):
        _gen(out, 3, 1)
    (out / "cls_labels.npz").write_bytes(b"stale")
    _gen(out, 2, 1, SIZE, 0, "--overwrite")
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == \
        ["synth_000000.jpg", "synth_000001.jpg", "synth_000002.jpg"]
    assert not (out / "cls_labels.npz").exists()


@pytest.mark.parametrize("args, msg", [
    (["--num_train", "0", "--num_val", "1"], "num_train"),
    (["--num_train", "2", "--num_val", "-1"], "num_val"),
    (["--num_train", "2", "--num_val", "1", "--size", "16"], "size"),
    (["--num_train", "2", "--num_val", "1", "--seed", "-3"], "seed"),
])
def test_bad_arguments(tmp_path, args, msg):
    with pytest.raises((UserError, OSError), match=msg):
        msv.main(["--out", str(tmp_path / "x"), *args])


def test_void_band_hand_case():
    lab = np.zeros((7, 7), np.uint8)
    lab[2:5, 2:5] = 3
    # width 1: pixels whose right or lower neighbour differs
    want1 = np.zeros((7, 7), bool)
    want1[1, 2:5] = True                 # above the block
    want1[4, 2:5] = True                 # block's bottom row (lower neighbour is 0)
    want1[2:5, 1] = True                 # left of the block
    want1[2:5, 4] = True                 # block's right column
    np.testing.assert_array_equal(msv.void_band(lab, 1), want1)
    # width 2: pixels with any differing 4-neighbour: the block outline (not its centre) + the ring
    want2 = np.zeros((7, 7), bool)
    want2[2:5, 2:5] = True
    want2[3, 3] = False
    want2[1, 2:5] = want2[5, 2:5] = True
    want2[2:5, 1] = want2[2:5, 5] = True
    np.testing.assert_array_equal(msv.void_band(lab, 2), want2)
    # width 4: dilated by 3x3: everything but the four corners (Chebyshev distance 2)
    want4 = np.ones((7, 7), bool)
    want4[[0, 0, 6, 6], [0, 6, 0, 6]] = False
    np.testing.assert_array_equal(msv.void_band(lab, 4), want4)
    assert [msv.band_width(s) for s in (32, 64, 128, 256, 512)] == [1, 1, 2, 4, 6]


def _slow_band_checks(lab: np.ndarray):
    """Reference loops: no two different non-void labels touch (the band separates them), and
    each void pixel sees two different non-void labels within 3 px (the band is thin and lies on
    borders) -- or, near the image edge, at least one (a sliver cut by the edge may vanish)."""
    h, w = lab.shape
    for y in range(h):
        for x in range(w):
            a = lab[y, x]
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < h and x + dx < w:
                    b = lab[y + dy, x + dx]
                    assert a == b or a == 255 or b == 255, (y, x)
            if a == 255:
                win = lab[max(0, y - 3):y + 4, max(0, x - 3):x + 4]
                near_edge = min(y, x, h - 1 - y, w - 1 - x) <= 3
                assert len(set(win[win != 255].tolist())) >= (1 if near_edge else 2), (y, x)


def test_void_band_separates_labels_and_is_thin(synth):
    for p in sorted((synth / "SegmentationClass").glob("*.png"))[:6]:
        lab = load_label_png(p)
        assert (lab == 255).any()
        _slow_band_checks(lab)
        # thin: far fewer void pixels than foreground pixels
        assert (lab == 255).sum() < ((lab >= 1) & (lab <= 5)).sum()


def test_void_band_width_scales_with_size():
    _, lab128, _ = msv.render_sample(0, 0, 128)
    _, lab512, _ = msv.render_sample(0, 0, 512)

    def width(lab):   # mean band width ~ void area / boundary length (half the band's edge count)
        v = lab == 255
        edges = (v[1:] != v[:-1]).sum() + (v[:, 1:] != v[:, :-1]).sum()
        return 2 * v.sum() / edges

    # the estimate reads a little low on staircase (diagonal) boundaries
    assert 1.0 <= width(lab128) <= 2.5
    assert 4.0 <= width(lab512) <= 7.0


def test_xml_matches_label_map(synth):
    seen_part = False
    for p in sorted((synth / "Annotations").glob("*.xml")):
        root = ET.parse(p).getroot()
        assert root.findtext("filename") == f"{p.stem}.jpg"
        assert (int(root.findtext("size/width")), int(root.findtext("size/height")),
                int(root.findtext("size/depth"))) == (SIZE, SIZE, 3)
        objs = root.findall("object")
        assert 1 <= len(objs) <= 3
        lab = load_label_png(synth / "SegmentationClass" / f"{p.stem}.png")
        names = [o.findtext("name") for o in objs]
        present = {SYNTHETIC_CLASSES[v - 1] for v in np.unique(lab) if 1 <= v <= 5}
        assert set(names) == present, p.name
        for o in objs:
            assert o.findtext("pose") and o.findtext("truncated") in "01" and o.findtext("difficult") in "01"
            xmin, ymin, xmax, ymax = (int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin <= xmax <= SIZE and 1 <= ymin <= ymax <= SIZE
            seen_part |= o.find("part/name") is not None
        # every pixel of class c lies in the union of the (1-based, inclusive) boxes named c
        for c in present:
            inside = np.zeros_like(lab, bool)
            for o in objs:
                if o.findtext("name") == c:
                    b = [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                    inside[b[1] - 1:b[3], b[0] - 1:b[2]] = True
            assert inside[lab == SYNTHETIC_CLASSES.index(c) + 1].all(), (p.name, c)
    assert seen_part, "no object with a <part> in the sample set"


def test_objects_are_large_and_textured():
    """Objects cover a reasonable area and are not flat colour (texture std within the object)."""
    areas, stds = [], []
    for i in range(12):
        img, lab, _ = msv.render_sample(3, i, 128)
        for c in range(1, 6):
            m = lab == c
            if m.sum() > 50:
                areas.append(m.mean())
                stds.append(img[m].astype(np.float32).std(0).mean())
    assert areas and np.median(areas) > 0.03
    assert np.median(stds) > 10.0


# md5 of image + label bytes of demo images (seed 0, 96 px), recorded before render_sample was
# split into compose_scene / object_shape / object_texture for tools.experiments.pretrain_trunk: the demo's
# dataset must not change when the generator's pieces are reused.
DEMO_MD5 = {0: "81e896b04231a4d16f85a144fee30867", 1: "2b899b6c371b0cd03bd0acf126cfbfd9",
            7: "69903c74b9d9bc5719409e7dd479f06a"}


@pytest.mark.parametrize("index", sorted(DEMO_MD5))
def test_demo_images_unchanged(index):
    import hashlib

    image, label, _ = msv.render_sample(0, index, 96)
    assert hashlib.md5(image.tobytes() + label.tobytes()).hexdigest() == DEMO_MD5[index]
