"""Data preparation (config_voc.sh, config_coco.sh, tools/data/make_train_aug.py, tools/data/process_coco.py)
and the container recipes. Everything runs offline on tiny archives built here."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.errors import UserError
from lib.io import load_cls_labels, load_label_png, read_list

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# fixtures: a miniature VOC 2012 trainval, SBD SegmentationClassAug and VOC test archive
# ---------------------------------------------------------------------------------------------
VOC_IDS = ["2007_000032", "2007_000039", "2008_000002", "2008_000003", "2009_000010", "2010_000001",
           "2011_000005"]
TRAIN = ["2007_000032", "2008_000002"]
VAL = ["2007_000039", "2009_000010"]
AUG = ["2007_000032", "2007_000039", "2008_000002", "2008_000003", "2009_000010", "2010_000001"]
EXPECTED_TRAIN_AUG = ["2007_000032", "2008_000002", "2008_000003", "2010_000001"]  # AUG - VAL
# objects of each XML; ('person', ['head', 'hand']) = a person with parts (parts are no class)
OBJECTS = {
    "2007_000032": [("aeroplane", []), ("person", ["head", "hand"])],
    "2007_000039": [("tvmonitor", [])],
    "2008_000002": [("dog", []), ("dog", []), ("sofa", [])],
    "2008_000003": [("person", ["foot"])],
    "2009_000010": [("bottle", []), ("chair", [])],
    "2010_000001": [("bicycle", []), ("train", [])],
    "2011_000005": [("cat", [])],
}
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
TEST_IDS = ["2008_000001", "2008_000004"]


def _png_bytes(arr, mode):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpg_bytes(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _xml(image_id, objects):
    objs = "".join(
        f"<object><name>{name}</name><difficult>0</difficult>"
        + "".join(f"<part><name>{p}</name></part>" for p in parts) + "</object>"
        for name, parts in objects)
    return (f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>8</width><height>6</height><depth>3</depth></size>{objs}</annotation>").encode()


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_voc_tar(path):
    base = "VOCdevkit/VOC2012"
    with tarfile.open(path, "w") as t:
        for k, i in enumerate(VOC_IDS):
            _add(t, f"{base}/JPEGImages/{i}.jpg", _jpg_bytes(k))
            _add(t, f"{base}/Annotations/{i}.xml", _xml(i, OBJECTS[i]))
        for i in TRAIN + VAL:
            _add(t, f"{base}/SegmentationClass/{i}.png", _png_bytes(np.zeros((6, 8), np.uint8), "L"))
        _add(t, f"{base}/ImageSets/Segmentation/train.txt", "".join(f"{i}\n" for i in TRAIN).encode())
        _add(t, f"{base}/ImageSets/Segmentation/val.txt", "".join(f"{i}\n" for i in VAL).encode())
        _add(t, f"{base}/ImageSets/Segmentation/trainval.txt",
             "".join(f"{i}\n" for i in sorted(TRAIN + VAL)).encode())


def build_sbd_zip(path):
    # Like the public zip: SegmentationClassAug/*.png plus a __MACOSX copy of resource forks.
    with zipfile.ZipFile(path, "w") as z:
        for k, i in enumerate(AUG):
            z.writestr(f"SegmentationClassAug/{i}.png", _png_bytes(np.full((6, 8), k, np.uint8), "L"))
        z.writestr("__MACOSX/SegmentationClassAug/._2007_000032.png", b"\0\5\26\7junk")


def build_sbd_tgz(path):
    with tarfile.open(path, "w:gz") as t:
        for k, i in enumerate(AUG):
            _add(t, f"aug/SegmentationClassAug/{i}.png", _png_bytes(np.full((6, 8), k, np.uint8), "L"))


def build_test_tar(path):
    base = "VOCdevkit/VOC2012"
    with tarfile.open(path, "w") as t:
        for k, i in enumerate(TEST_IDS):
            _add(t, f"{base}/JPEGImages/{i}.jpg", _jpg_bytes(100 + k))
        _add(t, f"{base}/ImageSets/Segmentation/test.txt", "".join(f"{i}\n" for i in TEST_IDS).encode())
        # must not replace the trainval list already in place
        _add(t, f"{base}/ImageSets/Segmentation/val.txt", b"bogus\n")


@pytest.fixture(scope="module")
def voc_archives(tmp_path_factory):
    d = tmp_path_factory.mktemp("voc_mirror")
    build_voc_tar(d / "VOCtrainval_11-May-2012.tar")
    build_sbd_zip(d / "SegmentationClassAug.zip")
    build_sbd_tgz(d / "SegmentationClassAug.tar.gz")
    build_test_tar(d / "VOC2012test.tar")
    return d


def run_script(script, env_extra, cwd=None, args=()):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOC", "SBD", "COCO", "DATA_ROOT", "ARCHIVE_DIR", "FORCE"))}
    env.update({"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env_extra})
    return subprocess.run(["bash", str(ROOT / script), *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=120)


def _mtimes(folder):
    return {str(p): p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# config_voc.sh
# ---------------------------------------------------------------------------------------------
def test_config_voc_builds_layout_and_skips_on_rerun(voc_archives, tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    for f in voc_archives.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    data = tmp_path / "data"
    env = {"DATA_ROOT": str(data), "VOC_URL": str(src / "VOCtrainval_11-May-2012.tar"), "VOC_MD5": "skip",
           "SBD_AUG_URL": f"file://{src / 'SegmentationClassAug.zip'}",
           "VOC_TEST_URL": str(src / "VOC2012test.tar")}
    r = run_script("config_voc.sh", env)
    assert r.returncode == 0, r.stdout + r.stderr

    voc = data / "VOCdevkit" / "VOC2012"
    for sub in ["JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug"]:
        assert (voc / sub).is_dir(), sub
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").iterdir()) == AUG  # no ._ files
    assert read_list(voc / "ImageSets/Segmentation/train.txt") == TRAIN
    assert read_list(voc / "ImageSets/Segmentation/val.txt") == VAL  # test tar did not clobber it
    assert read_list(voc / "ImageSets/Segmentation/train_aug.txt") == EXPECTED_TRAIN_AUG
    assert read_list(voc / "ImageSets/Segmentation/test.txt") == TEST_IDS
    assert all((voc / "JPEGImages" / f"{i}.jpg").is_file() for i in TEST_IDS)

    labels = load_cls_labels(voc / "cls_labels.npz")
    for i in EXPECTED_TRAIN_AUG + VAL:
        expected = np.zeros(20, np.float32)
        for name, _ in OBJECTS[i]:
            expected[VOC_CLASSES.index(name)] = 1
        np.testing.assert_array_equal(labels[i], expected, err_msg=i)

    # Second run: every step skipped. The mirror is gone, so any re-fetch would fail.
    for f in src.iterdir():
        f.unlink()
    before = _mtimes(voc)
    r2 = run_script("config_voc.sh", env)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert r2.stdout.count("skip:") == 5, r2.stdout
    assert "copying" not in r2.stdout and "extracting" not in r2.stdout
    assert _mtimes(voc) == before


def test_config_voc_md5_tar_sbd_and_missing_test_set(voc_archives, tmp_path):
    voc_tar = voc_archives / "VOCtrainval_11-May-2012.tar"
    base = {"VOC_URL": str(voc_tar), "SBD_AUG_URL": str(voc_archives / "SegmentationClassAug.tar.gz"),
            "VOC_TEST_URL": str(tmp_path / "nowhere" / "VOC2012test.tar"), "ARCHIVE_DIR": str(tmp_path / "arch")}
    # The runners' DATA_ROOT (.../VOCdevkit/VOC2012) is accepted and means its grandparent.
    voc = tmp_path / "d" / "VOCdevkit" / "VOC2012"

    bad = run_script("config_voc.sh", {**base, "DATA_ROOT": str(voc), "VOC_MD5": "0" * 32})
    assert bad.returncode != 0
    assert "md5 mismatch" in bad.stderr
    assert (tmp_path / "arch" / "VOCtrainval_11-May-2012.tar.bad").is_file()
    assert not (voc / "JPEGImages").exists()

    md5 = hashlib.md5(voc_tar.read_bytes()).hexdigest()
    r = run_script("config_voc.sh", {**base, "VOC_MD5": md5}, args=("--data_root", str(voc)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" in r.stderr and "VOC2012test.tar" in r.stderr  # test set: warning only
    assert (voc / "JPEGImages" / "2007_000032.jpg").is_file()
    assert not (voc / "VOCdevkit").exists()
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").iterdir()) == AUG
    assert read_list(voc / "ImageSets/Segmentation/train_aug.txt") == EXPECTED_TRAIN_AUG
    assert (voc / "cls_labels.npz").is_file()
    assert not (tmp_path / "d" / ".prep_markers" / "voc_test.done").exists()


def test_config_voc_rejects_a_non_archive(tmp_path):
    fake = tmp_path / "VOCtrainval_11-May-2012.tar"
    fake.write_text("<html>login required</html>")
    r = run_script("config_voc.sh", {"DATA_ROOT": str(tmp_path / "data"), "VOC_URL": str(fake),
                                     "VOC_MD5": "", "VOC_TEST": "0"})
    assert r.returncode != 0
    assert "not a readable archive" in r.stderr
    assert not (tmp_path / "data" / "VOCdevkit").exists()


def test_config_voc_md5_skip_never_marks_a_bad_archive_verified(voc_archives, tmp_path):
    """Issue 26, case 6: VOC_MD5=skip on a bad archive leaves no 'verified' marker; the failed
    extraction moves the archive aside and says how to retry; a rerun with the right URL and
    md5 downloads it again and succeeds."""
    fake = tmp_path / "page.tar"
    fake.write_text("<html>login required</html>")
    env = {"DATA_ROOT": str(tmp_path / "data"), "VOC_TEST": "0",
           "SBD_AUG_URL": str(voc_archives / "SegmentationClassAug.zip")}
    bad = run_script("config_voc.sh", {**env, "VOC_URL": str(fake), "VOC_MD5": "skip"})
    assert bad.returncode != 0
    err = bad.stderr.strip().splitlines()[-1]
    assert "tar extraction of" in err and "moved to" in err and "rerun to download it again" in err
    markers = tmp_path / "data/.prep_markers"
    assert not markers.exists() or not list(markers.glob("voc_trainval*"))
    archive = tmp_path / "data/archives/VOCtrainval_11-May-2012.tar"
    assert not archive.exists() and archive.with_name(archive.name + ".bad").is_file()

    voc_tar = voc_archives / "VOCtrainval_11-May-2012.tar"
    md5 = hashlib.md5(voc_tar.read_bytes()).hexdigest()
    good = run_script("config_voc.sh", {**env, "VOC_URL": str(voc_tar), "VOC_MD5": md5})
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"copying {voc_tar}" in good.stdout
    assert (markers / "voc_trainval.verified.done").is_file()
    assert (tmp_path / "data/VOCdevkit/VOC2012/cls_labels.npz").is_file()

    # A good archive under md5=skip extracts, but is still not marked verified.
    other = tmp_path / "other"
    ok = run_script("config_voc.sh", {**env, "DATA_ROOT": str(other), "VOC_URL": str(voc_tar),
                                      "VOC_MD5": "skip"})
    assert ok.returncode == 0, ok.stderr
    assert not (other / ".prep_markers/voc_trainval.verified.done").exists()
    assert (other / ".prep_markers/voc_trainval.done").is_file()


def test_config_voc_relative_python_is_the_callers(voc_archives, tmp_path):
    """Case 4 for the data script: PYTHON=bin/python from another directory."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    r = run_script("config_voc.sh", {"PYTHON": "bin/python", "DATA_ROOT": "data", "VOC_TEST": "0",
                                     "VOC_URL": str(voc_archives / "VOCtrainval_11-May-2012.tar"),
                                     "VOC_MD5": "skip",
                                     "SBD_AUG_URL": str(voc_archives / "SegmentationClassAug.zip")},
                   cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "data/VOCdevkit/VOC2012/cls_labels.npz").is_file()


def test_config_voc_missing_local_source_is_a_clear_error(tmp_path):
    r = run_script("config_voc.sh", {"DATA_ROOT": str(tmp_path), "VOC_URL": str(tmp_path / "none.tar")})
    assert r.returncode != 0 and "does not exist" in r.stderr


# ---------------------------------------------------------------------------------------------
# tools/data/make_train_aug.py
# ---------------------------------------------------------------------------------------------
def _voc_root(tmp_path, aug, val, jpgs):
    root = tmp_path / "VOC2012"
    (root / "SegmentationClassAug").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    for i in aug:
        (root / "SegmentationClassAug" / f"{i}.png").write_bytes(b"x")
    for i in jpgs:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(b"x")
    (root / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in val))
    return root


def test_make_train_aug_is_sorted_difference(tmp_path):
    from tools.data.make_train_aug import main, make_train_aug
    root = _voc_root(tmp_path, ["c", "a", "b", "v1", "v2"], ["v2", "v1", "z"], ["a", "b", "c"])
    (root / "SegmentationClassAug" / "._a.png").write_bytes(b"fork")
    assert make_train_aug(root) == ["a", "b", "c"]
    assert main(["--data_root", str(root), "--expect", "3"]) == 0
    assert (root / "ImageSets/Segmentation/train_aug.txt").read_text() == "a\nb\nc\n"
    with pytest.raises((UserError, OSError), match="3 train_aug ids, expected 10582"):
        main(["--data_root", str(root), "--expect", "10582"])


def test_make_train_aug_errors(tmp_path):
    from tools.data.make_train_aug import main, make_train_aug
    root = _voc_root(tmp_path, ["a", "b"], ["x"], ["a"])
    with pytest.raises(FileNotFoundError, match=r"1 train_aug ids .*\['b'\]"):
        make_train_aug(root)
    assert make_train_aug(root, check_images=False) == ["a", "b"]
    with pytest.raises((UserError, OSError), match="SegmentationClassAug"):
        main(["--data_root", str(tmp_path / "missing")])


# ---------------------------------------------------------------------------------------------
# tools/data/process_coco.py
# ---------------------------------------------------------------------------------------------
# The 80 COCO category ids (1..90 with gaps).
COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
            *range(72, 83), *range(84, 91)]
H, W = 10, 12


def _rle_uncompressed(mask):
    """Column-major run lengths starting with a zero run: a slow, independent RLE encoder."""
    flat = [int(v) for v in np.asarray(mask).flatten(order="F")]
    counts, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(n)
            cur, n = v, 0
        n += 1
    counts.append(n)
    return {"counts": counts, "size": [mask.shape[0], mask.shape[1]]}


def _crowd_mask():
    m = np.zeros((H, W), np.uint8)
    m[7:10, 0:3] = 1  # bottom-left block
    m[5:8, 9:12] = 1  # right block, overlaps the second polygon (x 4..10, y 3..8)
    return m


def _compressed_mask():
    m = np.zeros((8, 6), np.uint8)
    m[2:5, 1:4] = 1
    return m


def coco_json(names=None):
    """Instances JSON of three images; category names default to 'cat<id>' (not COCO's)."""
    import pycocotools.mask as mask_utils
    comp = mask_utils.encode(np.asfortranarray(_compressed_mask()))
    comp["counts"] = comp["counts"].decode()
    anns = [
        # image 9: polygon class id 1, then an overlapping polygon of id 90, then a crowd RLE of id 3
        {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0,
         "segmentation": [[1, 1, 7, 1, 7, 6, 1, 6]]},
        {"id": 2, "image_id": 9, "category_id": 90, "iscrowd": 0,
         "segmentation": [[4, 3, 10, 3, 10, 8, 4, 8]]},
        {"id": 3, "image_id": 9, "category_id": 3, "iscrowd": 1, "segmentation": _rle_uncompressed(_crowd_mask())},
        # image 139: compressed RLE of id 44
        {"id": 4, "image_id": 139, "category_id": 44, "iscrowd": 1,
         "segmentation": {"counts": comp["counts"], "size": [8, 6]}},
    ]
    return {
        "images": [{"id": 581929, "height": 5, "width": 7, "file_name": "COCO_val2014_000000581929.jpg"},
                   {"id": 139, "height": 8, "width": 6, "file_name": "COCO_val2014_000000000139.jpg"},
                   {"id": 9, "height": H, "width": W, "file_name": "COCO_val2014_000000000009.jpg"}],
        "annotations": anns,
        "categories": [{"id": c, "name": names[k] if names else f"cat{c}", "supercategory": "x"}
                       for k, c in reversed(list(enumerate(COCO_IDS)))],
    }


@pytest.fixture()
def coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(coco_json()))
    return root


def test_coco_category_mapping_by_hand(coco_root):
    from tools.data.process_coco import CocoSplit
    coco = CocoSplit(coco_root / "annotations" / "instances_val2014.json")
    assert coco.num_classes == 80 and coco.cat_ids == COCO_IDS  # sorted although listed reversed
    # hand-computed: id 1 -> 0, id 3 -> 2, id 44 -> 39 (11 + 13 + 2 + 13 ids before it), id 90 -> 79
    assert [coco.cat_index[c] for c in (1, 3, 44, 90)] == [0, 2, 39, 79]
    assert coco.ids() == ["000000000009", "000000000139", "000000581929"]
    assert [k for k, _ in coco.anns[9]] == [0, 79, 2]  # annotation order kept


def test_process_coco_labels(coco_root):
    from tools.data.process_coco import main
    assert main(["--data_root", str(coco_root), "--split", "val2014", "--workers", "1", "--no-progress"]) == 0
    ids = ["000000000009", "000000000139", "000000581929"]
    assert read_list(coco_root / "ImageSets" / "val2014.txt") == ids

    lab = load_label_png(coco_root / "SegmentationClass/val2014/000000000009.png")
    assert lab.shape == (H, W)
    assert lab[2, 2] == 1                     # inside the first polygon only
    assert lab[5, 5] == 80                    # overlap: the later annotation (id 90 -> 80) wins
    assert lab[4, 8] == 80                    # second polygon only
    assert lab[8, 1] == 3                     # crowd RLE painted (id 3 -> 3)
    assert lab[6, 9] == 3                     # crowd painted last, over the id-90 polygon
    assert lab[0, 11] == 0 and lab[9, 6] == 0  # background
    np.testing.assert_array_equal(lab[_crowd_mask().astype(bool)], 3)
    assert set(np.unique(lab)) == {0, 1, 3, 80}

    lab139 = load_label_png(coco_root / "SegmentationClass/val2014/000000000139.png")
    np.testing.assert_array_equal(lab139, _compressed_mask() * 40)  # id 44 -> 40
    lab0 = load_label_png(coco_root / "SegmentationClass/val2014/000000581929.png")
    assert lab0.shape == (5, 7) and not lab0.any()
    with Image.open(coco_root / "SegmentationClass/val2014/000000000009.png") as im:
        assert im.mode == "P"

    with np.load(coco_root / "cls_labels_val2014.npz", allow_pickle=False) as z:
        assert list(z["ids"]) == ids
        assert list(z["class_names"]) == [f"cat{c}" for c in COCO_IDS]
        labels = z["labels"]
    assert labels.shape == (3, 80)
    assert set(np.flatnonzero(labels[0])) == {0, 2, 79}   # crowd category counts
    assert set(np.flatnonzero(labels[1])) == {39}
    assert not labels[2].any()

    # Names that are not COCO's 80 go to classes.txt, which the readers then use.
    from lib.datasets import get_layout
    assert (coco_root / "classes.txt").read_text().split("\n")[:3] == ["cat1", "cat2", "cat3"]
    layout = get_layout("coco", coco_root, "val2014")
    assert layout.class_names == tuple(f"cat{c}" for c in COCO_IDS)
    assert layout.ids() == ids


def test_process_coco_class_file(tmp_path):
    from lib.datasets import COCO_CLASSES
    from tools.data.process_coco import main
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco_json(list(COCO_CLASSES))))
    args = ["--data_root", str(root), "--split", "val2017", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    assert not (root / "classes.txt").exists()  # the real COCO names need no override
    with np.load(root / "cls_labels_val2017.npz", allow_pickle=False) as z:
        assert tuple(z["class_names"]) == COCO_CLASSES
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises((UserError, OSError), match="differ from .*classes.txt"):
        main(args)


def test_process_coco_matches_pycocotools_annToMask(coco_root):
    """Whole-array check against a straightforward reference painter built on COCO.annToMask."""
    from pycocotools.coco import COCO
    from tools.data.process_coco import main
    main(["--data_root", str(coco_root), "--split", "val2014", "--workers", "2", "--no-progress"])
    import contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_root / "annotations" / "instances_val2014.json"))
    cat_to_label = {c: k + 1 for k, c in enumerate(sorted(coco.getCatIds()))}
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        ref = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):  # annotation order
            ref[coco.annToMask(ann) > 0] = cat_to_label[ann["category_id"]]
        got = load_label_png(coco_root / f"SegmentationClass/val2014/{img_id:012d}.png")
        np.testing.assert_array_equal(got, ref, err_msg=str(img_id))


def test_process_coco_skips_existing_unless_overwrite(coco_root):
    from lib.io import save_label_png
    from tools.data.process_coco import main
    args = ["--data_root", str(coco_root), "--split", "val2014", "--workers", "1", "--no-progress"]
    main(args)
    png = coco_root / "SegmentationClass/val2014/000000000009.png"
    save_label_png(png, np.full((H, W), 7, np.uint8))
    main(args)
    assert (load_label_png(png) == 7).all()
    main(args + ["--overwrite"])
    assert load_label_png(png)[5, 5] == 80


def test_process_coco_bad_input(coco_root):
    from tools.data.process_coco import main
    data = coco_json()
    data["annotations"].append({"id": 99, "image_id": 9, "category_id": 12, "segmentation": [[0, 0, 1, 0, 1, 1]]})
    bad = coco_root / "annotations" / "instances_bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises((UserError, OSError), match=r"instances_bad\.json: annotation 99 has unknown category 12"):
        main(["--data_root", str(coco_root), "--split", "bad", "--workers", "1", "--no-progress"])
    with pytest.raises((UserError, OSError), match="instances_missing.json does not exist"):
        main(["--data_root", str(coco_root), "--split", "missing", "--no-progress"])


def test_config_coco_local_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "annotations").mkdir(parents=True)
    (mirror / "zips").mkdir()
    data = coco_json()
    train = {**data, "images": data["images"][:1], "annotations": []}
    with zipfile.ZipFile(mirror / "annotations" / "annotations_trainval2014.zip", "w") as z:
        z.writestr("annotations/instances_val2014.json", json.dumps(data))
        z.writestr("annotations/instances_train2014.json", json.dumps(train))
    for split, ids in (("val2014", [9, 139, 581929]), ("train2014", [581929])):
        with zipfile.ZipFile(mirror / "zips" / f"{split}.zip", "w") as z:
            for i in ids:
                z.writestr(f"{split}/COCO_{split}_{i:012d}.jpg", _jpg_bytes(i))
    env = {"DATA_ROOT": str(tmp_path / "data"), "YEARS": "2014", "COCO_URL_BASE": f"file://{mirror}",
           "WORKERS": "1"}
    r = run_script("config_coco.sh", env)
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "data" / "coco"
    assert (root / "val2014" / "COCO_val2014_000000000139.jpg").is_file()
    assert (root / "annotations" / "instances_train2014.json").is_file()
    assert read_list(root / "ImageSets" / "train2014.txt") == ["000000581929"]
    assert load_label_png(root / "SegmentationClass/val2014/000000000009.png")[5, 5] == 80
    assert set(load_cls_labels(root / "cls_labels_val2014.npz")) == {"000000000009", "000000000139", "000000581929"}

    for f in list(mirror.rglob("*.zip")):
        f.unlink()
    before = _mtimes(root / "SegmentationClass")
    r2 = run_script("config_coco.sh", env)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert r2.stdout.count("skip:") == 5, r2.stdout  # 3 archives + 2 label steps
    assert _mtimes(root / "SegmentationClass") == before


# ---------------------------------------------------------------------------------------------
# container recipes (static: no container engine here)
# ---------------------------------------------------------------------------------------------
def _def_sections(text):
    sections, name = {"header": []}, "header"
    for line in text.splitlines():
        m = re.match(r"^%(\w+)", line)
        if m:
            name = m.group(1)
            sections.setdefault(name, [])
        else:
            sections[name].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def _pip_installs(text):
    """Normalised pip install commands (continuation lines joined, options and paths kept)."""
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    text = re.sub(r"\\\n\s*", " ", text)
    cmds = re.findall(r"/opt/venv/bin/pip install[^\n&]*", text)
    return [" ".join(c.split()) for c in cmds]


def _apt_packages(text):
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    text = re.sub(r"\\\n\s*", " ", text)
    m = re.search(r"apt-get install -y --no-install-recommends ([^\n&]*)", text)
    assert m, "no apt-get install line"
    return sorted(m.group(1).split())


def test_container_recipes_agree():
    deff = (ROOT / "pytorch.def").read_text()
    dock = (ROOT / "Dockerfile").read_text()
    sec = _def_sections(deff)
    for name in ("files", "post", "environment", "runscript"):
        assert name in sec, f"pytorch.def has no %{name}"
    assert re.search(r"^Bootstrap:\s*docker", sec["header"], re.M)
    base_def = re.search(r"^From:\s*(\S+)", sec["header"], re.M).group(1)
    # the Dockerfile's base is a build argument (tools/container/container_check.sh swaps it); its default
    assert re.search(r"^FROM\s+\$\{BASE_IMAGE\}\s*$", dock, re.M)
    base_dock = re.search(r"^ARG BASE_IMAGE=(\S+)", dock, re.M).group(1)
    assert base_def == base_dock and "ubuntu24.04" in base_def  # Python 3.12

    assert "-r /opt/icam/requirements.txt" in sec["post"]
    assert re.search(r"^\s*requirements\.txt\s", sec["files"], re.M)
    assert _pip_installs(sec["post"]) == _pip_installs(dock) and len(_pip_installs(dock)) == 3
    # torch from the CUDA 12.8 index unless TORCH_INDEX is set (only tools/container/container_check.sh does)
    assert '--index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"' in _pip_installs(dock)[1]
    assert _apt_packages(sec["post"]) == _apt_packages(dock)
    assert "build-essential" in _apt_packages(dock) and "python3-dev" in _apt_packages(dock)
    assert "opencv-python-headless" in (ROOT / "requirements.txt").read_text()

    # every %files source exists (globs must match), relative to the repo root = build directory
    for line in sec["files"].splitlines():
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        assert list(ROOT.glob(tok[0])), f"%files source {tok[0]} not in the repository"
    for needed in ("lib", "stage1_cam", "stage2_aff", "stage3_seg", "tools", "*.sh"):
        assert re.search(rf"^\s*{re.escape(needed)}\s", sec["files"], re.M), needed


def _runner_logic_results(script_for, tmp_path):
    """Run a runscript with /opt/icam replaced by a fake repo whose runners echo their args."""
    fake = tmp_path / "opt_icam"
    fake.mkdir(exist_ok=True)
    for r in ("run_all_voc.sh", "run_all_coco.sh"):
        (fake / r).write_text(f'echo "{r}:$*"\n')
    other = tmp_path / "mine.sh"
    other.write_text('echo "mine:$*"\n')

    def run(*args):
        out = subprocess.run(["bash", "-c", script_for(fake), "runscript", *args], capture_output=True,
                             text=True, cwd=tmp_path, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    return [run(), run("--foo", "1"), run("run_all_coco.sh", "x"), run(str(other), "y"), run("mine.sh")]


def test_runscript_and_entrypoint_pick_the_runner(tmp_path):
    expected = ["run_all_voc.sh:", "run_all_voc.sh:--foo 1", "run_all_coco.sh:x", "mine:y", "mine:"]
    runscript = _def_sections((ROOT / "pytorch.def").read_text())["runscript"]
    assert _runner_logic_results(lambda fake: runscript.replace("/opt/icam", str(fake)), tmp_path) == expected
    line = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT")][0]
    entry = json.loads(line[len("ENTRYPOINT"):])
    assert entry[:2] == ["/bin/bash", "-c"]
    assert _runner_logic_results(lambda fake: entry[2].replace("/opt/icam", str(fake)), tmp_path) == expected
