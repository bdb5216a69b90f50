"""tools/data/make_cls_labels.py: image-level labels from VOC XML."""
import re
import shutil

import numpy as np
import pytest

from lib.errors import UserError
from lib.datasets.classes import SYNTHETIC_CLASSES, VOC_CLASSES
from lib.io import load_cls_labels, load_label_png
from tools.data import make_cls_labels as mcl
from tools.data import make_synthetic_voc as msv


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        return [str(i) for i in z["ids"]], z["labels"], [str(c) for c in z["class_names"]]


def _names(row, class_names):
    return {class_names[k] for k in np.nonzero(row)[0]}


def _xml(objects, parts=()):
    """Tiny VOC XML; objects = [(name, difficult)], parts = [(object index, part name)]."""
    body = []
    for k, (name, diff) in enumerate(objects):
        part = "".join(f"<part><name>{p}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
                       f"<ymax>2</ymax></bndbox></part>" for j, p in parts if j == k)
        body.append(f"<object>\n  <name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                    f"<difficult>{diff}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                    f"<ymax>5</ymax></bndbox>{part}</object>")
    return f"<annotation><filename>x.jpg</filename>{''.join(body)}</annotation>\n"


@pytest.fixture
def real_root(shared_dir, tmp_path):
    src = shared_dir / "data" / "voc_real"
    ann = tmp_path / "VOC2012" / "Annotations"
    ann.mkdir(parents=True)
    for p in sorted(src.glob("*.xml")):
        shutil.copy(p, ann / p.name)
    return tmp_path / "VOC2012", src


def test_real_voc_annotations(real_root):
    root, src = real_root
    mcl.main(["--data_root", str(root)])
    ids, labels, names = _load(root / "cls_labels.npz")
    assert names == list(VOC_CLASSES) and labels.dtype == np.uint8 and labels.shape == (len(ids), 20)
    lab = dict(zip(ids, labels))
    # 2007_000027: one person with head/hand/foot parts -> person only
    assert _names(lab["2007_000027"], names) == {"person"}
    # 2007_000032: two aeroplanes and two persons
    assert _names(lab["2007_000032"], names) == {"aeroplane", "person"}
    # lib.io loader sees the same thing (float32 multi-hot)
    loaded = load_cls_labels(root / "cls_labels.npz")
    np.testing.assert_array_equal(loaded["2007_000032"], lab["2007_000032"].astype(np.float32))


def test_real_voc_000033(real_root):
    root, src = real_root
    xml = src / "2007_000033.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} not in the shared samples (only its JPEG/PNG are)")
    # independent reading: object-level names by regex (a <name> right after <object>)
    expected = set(re.findall(r"<object>\s*<name>\s*(\w+)\s*</name>", xml.read_text())) & set(VOC_CLASSES)
    mcl.main(["--data_root", str(root)])
    ids, labels, names = _load(root / "cls_labels.npz")
    assert _names(labels[ids.index("2007_000033")], names) == expected
    gt = load_label_png(src / "2007_000033.png")
    assert {VOC_CLASSES[v - 1] for v in np.unique(gt) if 1 <= v <= 20} <= expected


def test_part_names_ignored_difficult_counted_whitespace_stripped(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    # a part named like a class ('dog') inside a person must not count; a non-class object
    # name ('head') is ignored; a difficult cat counts; ' bus ' is stripped
    (ann / "a.xml").write_text(_xml([("person", 0), ("head", 0), ("cat", 1), (" bus ", 0)],
                                    parts=[(0, "dog"), (0, "hand")]))
    (ann / "b.xml").write_text(_xml([]))
    ids, labels, names, ignored = mcl.build_cls_labels(tmp_path)
    assert ids == ["a", "b"]
    assert _names(labels[0], names) == {"person", "cat", "bus"}
    assert labels[1].sum() == 0
    assert ignored == {"head": 1}


def test_classes_txt_and_lists(tmp_path):
    root = tmp_path / "s"
    (root / "Annotations").mkdir(parents=True)
    (root / "classes.txt").write_text("disc\nbox\n\ntriangle\nstar\nring\n")
    (root / "Annotations" / "i1.xml").write_text(_xml([("ring", 0), ("person", 0)]))
    (root / "Annotations" / "i2.xml").write_text(_xml([("disc", 0), ("box", 0)]))
    (root / "Annotations" / "i3.xml").write_text(_xml([("star", 0)]))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("i2\ni1\n")
    (lists / "val.txt").write_text("i1\n")
    out = tmp_path / "labels.npz"
    mcl.main(["--data_root", str(root), "--out", str(out), "--list", "train", str(lists / "val.txt")])
    ids, labels, names = _load(out)
    assert names == list(SYNTHETIC_CLASSES)
    assert ids == ["i2", "i1"]                 # union, first-seen order, no duplicate
    np.testing.assert_array_equal(labels, [[1, 1, 0, 0, 0], [0, 0, 0, 0, 1]])


def test_missing_and_malformed_xml(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "ok.xml").write_text(_xml([("dog", 0)]))
    (ann / "bad.xml").write_text("<annotation><object><name>dog</name></annotation>")
    with pytest.raises((UserError, OSError), match=r"bad\.xml.*malformed"):
        mcl.main(["--data_root", str(tmp_path)])
    lst = tmp_path / "l.txt"
    lst.write_text("ok\nmissing\n")
    with pytest.raises((UserError, OSError), match=r"missing\.xml"):
        mcl.main(["--data_root", str(tmp_path), "--list", str(lst)])
    with pytest.raises((UserError, OSError), match="nope"):
        mcl.main(["--data_root", str(tmp_path), "--list", "nope"])
    with pytest.raises((UserError, OSError), match="Annotations"):
        mcl.main(["--data_root", str(tmp_path / "elsewhere")])


def test_synthetic_set_labels_match_label_maps(tmp_path):
    root = tmp_path / "synth"
    msv.main(["--out", str(root), "--num_train", "6", "--num_val", "2", "--size", "64", "--seed", "5"])
    mcl.main(["--data_root", str(root), "--list", "train_aug", "val"])
    ids, labels, names = _load(root / "cls_labels.npz")
    assert names == list(SYNTHETIC_CLASSES) and len(ids) == 8
    for i, row in zip(ids, labels):
        lab = load_label_png(root / "SegmentationClass" / f"{i}.png")
        want = np.zeros(5, np.uint8)
        want[[v - 1 for v in np.unique(lab) if 1 <= v <= 5]] = 1
        np.testing.assert_array_equal(row, want, err_msg=i)
