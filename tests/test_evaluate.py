"""Evaluation toolkit: hand-computed IoU / boundary / contour-F cases, equivalence with the slow
loop reference (lib.evaluation.reference), the CLI and its errors, CAM inputs, JSON schema, and
the two real VOC masks."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lib.evaluation import (confusion_matrix, contour_counts, contour_fscore_from_counts, evaluate_dir,
                            miou_from_confusion, resolve_class_names, seg2bmap, tolerance_radius)
from lib.evaluation.miou import cam_fg_argmax, sweep_confusions
from lib.evaluation.reference import ref_boundary, ref_contour_counts, ref_image_counts, ref_scores
from lib.io import cam_to_label, load_label_png, save_cam, save_crf, save_label_png
from lib.errors import run_main
from tools.evaluate import main as cli_main


def B(rows):
    return np.array(rows, bool)


# --------------------------------------------------------------------------- boundary map

@pytest.mark.parametrize("mask, expected", [
    # single interior pixel: it and the three pixels whose E/S/SE neighbour it is
    ([[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 0], [0, 0, 0]]),
    # full mask: no boundary at all (last row/column only compare inside the image)
    ([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    # touching the last row: the last row uses only the east neighbour
    ([[0, 0, 0], [0, 0, 0], [1, 1, 0]], [[0, 0, 0], [1, 1, 0], [0, 1, 0]]),
    # the last column uses only the south neighbour
    ([[0, 0, 1], [0, 0, 1], [0, 0, 1]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]]),
    # single row / single column, bottom-right corner always 0
    ([[0, 1, 1, 0]], [[1, 0, 1, 0]]),
    ([[1], [0], [0]], [[1], [0], [0]]),
    # a bottom-right corner pixel: itself 0, found by its SE/S/E neighbours
    ([[0, 0], [0, 1]], [[1, 1], [1, 0]]),
])
def test_seg2bmap_hand_cases(mask, expected):
    assert np.array_equal(seg2bmap(B(mask)), B(expected))
    assert np.array_equal(ref_boundary(B(mask)), B(expected))


def test_seg2bmap_matches_loop_reference_random():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 10, 2)
        m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        assert np.array_equal(seg2bmap(m), ref_boundary(m))


def test_tolerance_radius():
    assert tolerance_radius(375, 500) == 5      # 0.008 * 625 = 5 exactly
    assert tolerance_radius(281, 500) == 5      # ceil(4.59)
    assert tolerance_radius(6, 6) == 1
    assert tolerance_radius(1000, 1000) == 12   # ceil(11.31)


# --------------------------------------------------------------------------- IoU

def test_iou_hand_case():
    gt = np.array([[0, 0, 1], [1, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2]], np.uint8)
    conf = confusion_matrix(gt, pred, 3)
    assert conf.tolist() == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]   # the void pixel's "2" is ignored
    miou, iou = miou_from_confusion(conf)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 4)
    assert math.isnan(iou[2])                                   # absent everywhere -> nan, excluded
    assert miou == pytest.approx((1 / 3 + 1 / 2) / 2)


# --------------------------------------------------------------------------- contour F

def _hand_contour_pair():
    """6x6 image (r = 1, a plus-shaped disk); counts worked out by hand in the comments."""
    gt = np.zeros((6, 6), np.uint8)
    pred = np.zeros((6, 6), np.uint8)
    gt[1:3, 1:3] = 1       # b_gt: (0,0)(0,1)(0,2)(1,0)(2,0)(1,2)(2,1)(2,2) = 8
    pred[1:3, 3:5] = 1     # same shape 2 px to the right; 5 of 8 within distance 1 on each side
    gt[4, 0:2] = 2         # only in GT: b = (3,0)(3,1)(4,0)(4,1) = 4 -> F = 0
    gt[5, 0] = 255         # void -> background, does not change class 2's boundary
    pred[4, 4] = 3         # only in pred: b = (3,3)(3,4)(4,3)(4,4) = 4 -> F = 0
    pred[5, 5] = 5         # corner pixel (itself 0): b = (4,4) SE, (4,5) last column, (5,4) last row
    return gt, pred        # class 4 absent everywhere -> F = NaN, left out of the mean


def test_contour_counts_and_fscore_hand_case():
    gt, pred = _hand_contour_pair()
    counts = contour_counts(gt, pred, 5)
    expected = np.array([[5, 0, 0, 0, 0],    # matches_gt
                         [5, 0, 0, 0, 0],    # matches_pred
                         [8, 4, 0, 0, 0],    # n_gt
                         [8, 0, 4, 0, 3]])   # n_pred
    assert np.array_equal(counts, expected)
    assert np.array_equal(ref_contour_counts(gt, pred, 5), expected)
    mean_f, f = contour_fscore_from_counts(counts)
    assert f.tolist() == pytest.approx([5 / 8, 0.0, 0.0, math.nan, 0.0], nan_ok=True)
    assert mean_f == pytest.approx((5 / 8) / 4)


def test_contour_fscore_conventions():
    # columns: neither present, only GT, only pred, both with zero matches, P = 1 / R = 1/2,
    # no boundary pixel but present (a mask covering whole images in GT and prediction)
    counts = np.array([[0, 0, 0, 0, 2, 0],
                       [0, 0, 0, 0, 3, 0],
                       [0, 5, 0, 4, 4, 0],
                       [0, 0, 6, 4, 3, 0]])
    mean_f, f = contour_fscore_from_counts(counts, present=[False, True, True, True, True, True])
    assert f.tolist() == pytest.approx([math.nan, 0.0, 0.0, 0.0, 2 * 1 * 0.5 / 1.5, 1.0], nan_ok=True)
    assert mean_f == pytest.approx((2 / 3 + 1) / 5)
    # without ``present`` a class without boundary pixels counts as absent
    mean_f, f = contour_fscore_from_counts(counts)
    assert math.isnan(f[0]) and math.isnan(f[5]) and mean_f == pytest.approx((2 / 3) / 4)
    assert math.isnan(contour_fscore_from_counts(np.zeros((4, 3), np.int64))[0])


def test_classes_absent_everywhere_change_neither_mean(tmp_path):
    """--num_classes above the classes present (no classes.txt): the absent classes are NaN in
    both IoU and contour F and left out of both means, so N = 3 and N = 5 score the same; a class
    predicted but absent from the GT scores 0 in both. The original's rule (both boundary counts
    0 -> F = 1) would have given (5/8 + 1 + 0 + 1 + 1) / 5 = 72.5 % contour F at N = 5."""
    gt, pred = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
    gt[1:3, 1:3] = 1        # class 1: 4 px, predicted 2 px to the right: IoU 0, F 5/8 (r = 1)
    pred[1:3, 3:5] = 1
    gt[4, 0:2] = 2          # class 2: exact, IoU 1, F 1
    pred[4, 0:2] = 2
    pred[4, 4] = 3          # class 3: predicted only, IoU 0, F 0
    # background: GT 30 px, predicted 29 px, both 36 - (4 + 4 + 2 + 1) = 25 -> IoU 25 / 34
    _write_dataset(tmp_path, [(gt, pred)])
    miou, cf = (25 / 34 + 0 + 1 + 0) / 4, (5 / 8 + 1 + 0) / 3
    for n in (3, 5):
        res = evaluate_dir(tmp_path / "pred", tmp_path / "gt", ["img000"], n, workers=1,
                           progress=False)
        assert res["miou"] == pytest.approx(miou) and res["contour_f"] == pytest.approx(cf)
        assert list(res["per_class_contour_f"].values())[:3] == pytest.approx([5 / 8, 1.0, 0.0])
        assert all(math.isnan(v) for v in list(res["per_class_contour_f"].values())[3:])
        assert all(math.isnan(v) for v in list(res["per_class_iou"].values())[4:])
    assert _ref_dataset([(gt, pred)], 5)[0] == pytest.approx(miou)
    assert _ref_dataset([(gt, pred)], 5)[2] == pytest.approx(cf)


def test_a_class_covering_whole_images_scores_contour_f_1(tmp_path):
    """A class whose masks cover whole images has no boundary pixel in GT nor prediction; it
    occurs, so the original's rule gives F = 1 (not NaN, not 0)."""
    full = np.full((5, 5), 2, np.uint8)
    other = np.zeros((5, 5), np.uint8)
    other[1:3, 1:3] = 1
    _write_dataset(tmp_path, [(full, full), (other, other)])
    res = evaluate_dir(tmp_path / "pred", tmp_path / "gt", ["img000", "img001"], 3, workers=1,
                       progress=False)
    f = list(res["per_class_contour_f"].values())
    assert f[:2] == [1.0, 1.0] and math.isnan(f[2]) and res["contour_f"] == 1.0


def _blob_pair(rng, h, w, n):
    """Random blobby GT with a void band and a perturbed prediction."""
    yy, xx = np.mgrid[:h, :w]
    gt = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1, h / 2 + 1), rng.uniform(1, w / 2 + 1)
        gt[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(1, n + 1)
    pred = np.roll(gt, (rng.integers(-2, 3), rng.integers(-2, 3)), (0, 1))
    noise = rng.random((h, w)) < 0.03
    pred[noise] = rng.integers(0, n + 1, noise.sum())
    band = seg2bmap(gt > 0) & (rng.random((h, w)) < 0.7)
    gt[band] = 255
    return gt, pred


def test_contour_and_confusion_match_reference_random():
    rng = np.random.default_rng(1)
    sizes = [(1, 1), (1, 7), (9, 1), (5, 8), (17, 23), (40, 31), (160, 230)]  # r = 1 .. 3
    for i in range(24):
        h, w = sizes[i % len(sizes)]
        n = int(rng.integers(1, 5))
        gt, pred = _blob_pair(rng, h, w, n)
        conf_ref, cnt_ref = ref_image_counts(gt, pred, n, skip_absent=False)
        assert np.array_equal(confusion_matrix(gt, pred, n + 1), conf_ref)
        assert np.array_equal(contour_counts(gt, pred, n), cnt_ref), (h, w, n)


# --------------------------------------------------------------------------- driver / CLI

def _write_dataset(root, pairs):
    (root / "gt").mkdir(parents=True, exist_ok=True)
    ids = []
    for k, (gt, pred) in enumerate(pairs):
        i = f"img{k:03d}"
        save_label_png(root / "gt" / f"{i}.png", gt)
        if pred is not None:
            save_label_png(root / "pred" / f"{i}.png", pred)
        ids.append(i)
    (root / "list.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids


def _ref_dataset(pairs, n):
    conf = np.zeros((n + 1, n + 1), np.int64)
    cnt = np.zeros((4, n), np.int64)
    for gt, pred in pairs:
        c, k = ref_image_counts(gt, pred, n)
        conf += c
        cnt += k
    return ref_scores(conf, cnt)


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_dir_matches_reference(tmp_path, workers):
    rng = np.random.default_rng(2)
    n = 4
    pairs = [_blob_pair(rng, int(rng.integers(20, 60)), int(rng.integers(20, 60)), n) for _ in range(9)]
    ids = _write_dataset(tmp_path, pairs)
    names = ["a", "b", "c", "d"]
    res = evaluate_dir(tmp_path / "pred", tmp_path / "gt", ids, n, workers=workers, class_names=names,
                       progress=False)
    miou, ious, cf, fs = _ref_dataset(pairs, n)
    assert res["num_images"] == 9
    assert res["miou"] == pytest.approx(miou, abs=1e-12)
    assert res["contour_f"] == pytest.approx(cf, abs=1e-12)
    assert list(res["per_class_iou"]) == ["background"] + names
    assert list(res["per_class_contour_f"]) == names
    np.testing.assert_allclose(list(res["per_class_iou"].values()), ious, atol=1e-12)
    np.testing.assert_allclose(list(res["per_class_contour_f"].values()), fs, atol=1e-12)


def test_cli_json_schema_and_table(tmp_path, capsys):
    gt, pred = _hand_contour_pair()
    _write_dataset(tmp_path, [(gt, pred)])
    out = tmp_path / "res" / "r.json"
    rc = cli_main(["--pred_dir", str(tmp_path / "pred"), "--gt_dir", str(tmp_path / "gt"), "--list",
                   str(tmp_path / "list.txt"), "--num_classes", "5", "--eval_workers", "1", "--out_json", str(out),
                   "--title", "hand case", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "hand case" in text and "class_0" in text and "background" in text
    assert f"{100 * (5 / 8) / 4:.2f}" in text              # contour F in percent
    res = json.loads(out.read_text())
    assert set(res) == {"num_images", "miou", "contour_f", "per_class_iou", "per_class_contour_f"}
    assert res["num_images"] == 1
    assert list(res["per_class_iou"]) == ["background"] + [f"class_{k}" for k in range(5)]
    assert list(res["per_class_contour_f"]) == [f"class_{k}" for k in range(5)]
    # class_3 (label 4) is absent from GT and pred: IoU and contour F null, out of both means
    assert res["per_class_iou"]["class_3"] is None
    assert res["per_class_contour_f"]["class_3"] is None
    assert res["per_class_iou"]["class_0"] == 0.0         # the two blocks do not overlap
    assert res["contour_f"] == pytest.approx((5 / 8) / 4)
    vals = [v for v in res["per_class_iou"].values() if v is not None]
    assert res["miou"] == pytest.approx(sum(vals) / len(vals))
    fs = [v for v in res["per_class_contour_f"].values() if v is not None]
    assert all(0.0 <= v <= 1.0 for v in vals + fs) and len(fs) == 4


def _run_cli_error(tmp_path, capsys, n=2, extra=()):
    """Run the CLI through run_main: exit 2 and one line ``evaluate: error: ...`` on stderr."""
    with pytest.raises(SystemExit) as e:
        run_main(cli_main, "evaluate",
                 ["--pred_dir", str(tmp_path / "pred"), "--gt_dir", str(tmp_path / "gt"), "--list",
                  str(tmp_path / "list.txt"), "--num_classes", str(n), "--eval_workers", "1",
                  "--no-progress", *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors(tmp_path, capsys):
    g = np.zeros((4, 5), np.uint8)
    g[1, 1] = 1
    _write_dataset(tmp_path, [(g, g), (g, None)])              # img001 has no prediction
    msg = _run_cli_error(tmp_path, capsys)
    assert "prediction missing" in msg and "img001.png" in msg

    save_label_png(tmp_path / "pred" / "img001.png", np.zeros((5, 4), np.uint8))  # transposed size
    msg = _run_cli_error(tmp_path, capsys)
    assert "img001.png" in msg and "does not match" in msg

    save_label_png(tmp_path / "pred" / "img001.png", np.full((4, 5), 3, np.uint8))  # 3 > N = 2
    msg = _run_cli_error(tmp_path, capsys)
    assert "img001.png" in msg and "out of range" in msg and "[3]" in msg

    save_label_png(tmp_path / "pred" / "img001.png", g)
    bad = g.copy()
    bad[0, 0] = 7                                                # neither 0..2 nor 255
    save_label_png(tmp_path / "gt" / "img001.png", bad)
    msg = _run_cli_error(tmp_path, capsys)
    assert "gt" in msg and "img001.png" in msg and "[7]" in msg

    (tmp_path / "gt" / "img001.png").unlink()
    msg = _run_cli_error(tmp_path, capsys)
    assert "ground truth missing" in msg and "img001.png" in msg

    msg = _run_cli_error(tmp_path, capsys, extra=["--type", "png", "--bg_sweep"])
    assert "cam" in msg.lower()


def test_cli_exit_code_subprocess(tmp_path, repo_root):
    g = np.zeros((4, 5), np.uint8)
    _write_dataset(tmp_path, [(g, None)])
    (tmp_path / "pred").mkdir()
    r = subprocess.run([sys.executable, "-m", "tools.evaluate", "--pred_dir", str(tmp_path / "pred"),
                        "--gt_dir", str(tmp_path / "gt"), "--list", str(tmp_path / "list.txt"),
                        "--num_classes", "2", "--eval_workers", "1"], cwd=repo_root, capture_output=True, text=True)
    assert r.returncode != 0
    assert "img000.png" in r.stderr and "missing" in r.stderr


def test_api_errors(tmp_path):
    g = np.zeros((4, 5), np.uint8)
    ids = _write_dataset(tmp_path, [(g, None)])
    with pytest.raises(FileNotFoundError, match="prediction folder .*pred does not exist"):
        evaluate_dir(tmp_path / "pred", tmp_path / "gt", ids, 2, workers=1, progress=False)
    (tmp_path / "pred").mkdir()
    with pytest.raises(FileNotFoundError, match="img000"):
        evaluate_dir(tmp_path / "pred", tmp_path / "gt", ids, 2, workers=1, progress=False)
    # two images and two workers: the error raised inside a pool worker reaches the caller intact
    save_label_png(tmp_path / "gt" / "img001.png", g)
    save_cam(tmp_path / "pred" / "img000.npz", [1], np.zeros((1, 4, 5)))
    save_cam(tmp_path / "pred" / "img001.npz", [5], np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="img001.npz.*out of range"):
        evaluate_dir(tmp_path / "pred", tmp_path / "gt", ids + ["img001"], 2, pred_type="cam", workers=2,
                     progress=False)


# --------------------------------------------------------------------------- CAM / CRF inputs

def test_cam_inputs_and_bg_threshold(tmp_path):
    # 2x3 image, foreground classes 0 and 2 present (labels 1 and 3), N = 3
    cams = np.array([[[0.9, 0.2, 0.1], [0.25, 0.0, 0.6]],
                     [[0.05, 0.5, 0.2], [0.3, 0.1, 0.3]]], np.float32)
    gt = np.array([[1, 3, 0], [3, 0, 255]], np.uint8)
    # default background 1 - sum = [[.05,.3,.7],[.45,.9,.1]] -> labels [[1,3,0],[0,0,1]]
    # fixed background 0.28 -> labels [[1,3,0],[3,0,1]]
    (tmp_path / "gt").mkdir()
    save_label_png(tmp_path / "gt" / "a.png", gt)
    save_cam(tmp_path / "cam" / "a.npz", [0, 2], cams)
    res = evaluate_dir(tmp_path / "cam", tmp_path / "gt", ["a"], 3, pred_type="cam", workers=1,
                       class_names=["x", "y", "z"], progress=False)
    # conf: bg row: (0,2)->0 (1,1)->0 : TP0=2; label1: (0,0)->1; label3: (0,1)->3, (1,0)->0
    assert res["per_class_iou"]["background"] == pytest.approx(2 / 3)
    assert res["per_class_iou"]["x"] == pytest.approx(1.0)
    assert res["per_class_iou"]["z"] == pytest.approx(1 / 2)
    assert math.isnan(res["per_class_iou"]["y"])
    assert res["miou"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    res_t = evaluate_dir(tmp_path / "cam", tmp_path / "gt", ["a"], 3, pred_type="cam", bg_threshold=0.28,
                         workers=1, class_names=["x", "y", "z"], progress=False)
    assert res_t["per_class_iou"]["background"] == pytest.approx(1.0)
    assert res_t["per_class_iou"]["z"] == pytest.approx(1.0)
    assert res_t["miou"] == pytest.approx(1.0)
    # the same CAMs stored as a CRF artifact (background channel = 1 - sum)
    probs = np.concatenate([1 - cams.sum(0, keepdims=True), cams])
    save_crf(tmp_path / "crf" / "a.npz", [0, 1, 3], probs)
    res_c = evaluate_dir(tmp_path / "crf", tmp_path / "gt", ["a"], 3, pred_type="crf", workers=1,
                         class_names=["x", "y", "z"], progress=False)
    assert res_c["miou"] == pytest.approx(res["miou"])


def test_sweep_confusions_match_cam_to_label():
    rng = np.random.default_rng(3)
    for _ in range(10):
        h, w, n = 7, 9, 4
        keys = np.sort(rng.choice(n, int(rng.integers(0, n + 1)), replace=False))
        cams = np.round(rng.random((len(keys), h, w)), 2).astype(np.float32)  # exercise ties with t
        gt = rng.integers(0, n + 1, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.2] = 255
        sweep = sweep_confusions(gt, *cam_fg_argmax(keys, cams), n + 1)
        for i in range(60):
            lab = cam_to_label(keys, cams, bg_threshold=i / 100)
            assert np.array_equal(sweep[i], confusion_matrix(gt, lab, n + 1)), i


def test_cli_bg_sweep(tmp_path, capsys):
    rng = np.random.default_rng(4)
    (tmp_path / "gt").mkdir()
    ids = []
    for k in range(3):
        gt, _ = _blob_pair(rng, 12, 15, 3)
        keys = np.unique(gt[(gt > 0) & (gt < 255)]) - 1
        cams = rng.random((len(keys), 12, 15)).astype(np.float32) * 0.6
        save_label_png(tmp_path / "gt" / f"{k}.png", gt)
        save_cam(tmp_path / "cam" / f"{k}.npz", keys, cams)
        ids.append(str(k))
    (tmp_path / "list.txt").write_text("\n".join(ids) + "\n")
    out = tmp_path / "s.json"
    cli_main(["--pred_dir", str(tmp_path / "cam"), "--gt_dir", str(tmp_path / "gt"), "--list",
              str(tmp_path / "list.txt"), "--num_classes", "3", "--type", "cam", "--bg_sweep",
              "--eval_workers", "2", "--out_json", str(out), "--no-progress"])
    res = json.loads(out.read_text())
    sw = res["bg_sweep"]
    assert len(sw["thresholds"]) == 60 and sw["thresholds"][0] == 0.0 and sw["thresholds"][-1] == 0.59
    for i in (0, 17, 42, 59):
        direct = evaluate_dir(tmp_path / "cam", tmp_path / "gt", ids, 3, pred_type="cam",
                              bg_threshold=i / 100, workers=1, class_names="x y z".split(), progress=False)
        assert sw["miou"][i] == pytest.approx(direct["miou"], abs=1e-12)
    assert sw["best_miou"] == pytest.approx(max(sw["miou"]))
    assert sw["miou"][round(sw["best_threshold"] * 100)] == sw["best_miou"]
    assert "best threshold" in capsys.readouterr().out


# --------------------------------------------------------------------------- class names

def test_class_names_resolution(tmp_path):
    (tmp_path / "gt").mkdir()
    assert resolve_class_names(None, tmp_path / "gt", 3) == ["class_0", "class_1", "class_2"]
    (tmp_path / "classes.txt").write_text("cat\ndog\ncow\n")
    assert resolve_class_names(None, tmp_path / "gt", 3) == ["cat", "dog", "cow"]
    (tmp_path / "c2.txt").write_text("background\ncat\ndog\ncow\n")
    assert resolve_class_names(str(tmp_path / "c2.txt"), tmp_path / "gt", 3) == ["cat", "dog", "cow"]
    with pytest.raises(ValueError, match="3 names for num_classes=4"):
        resolve_class_names(None, tmp_path / "gt", 4)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        resolve_class_names(str(tmp_path / "nope.txt"), tmp_path / "gt", 3)


def test_class_names_voc():
    classes = pytest.importorskip("lib.datasets.classes")
    names = resolve_class_names("voc", "/nonexistent/gt", 20)
    assert names == list(classes.VOC_CLASSES) and names[0] == "aeroplane" and names[-1] == "tvmonitor"


# --------------------------------------------------------------------------- real VOC masks

def test_real_voc_masks(shared_dir, tmp_path):
    src = shared_dir / "data" / "voc_real"
    ids = ["2007_000032", "2007_000033"]
    gts = [load_label_png(src / f"{i}.png") for i in ids]
    names = [f"c{k}" for k in range(20)]
    # GT against itself (void pixels predicted as background): everything perfect
    for i, g in zip(ids, gts):
        save_label_png(tmp_path / "self" / f"{i}.png", np.where(g == 255, 0, g))
    res = evaluate_dir(tmp_path / "self", src, ids, 20, workers=1, class_names=names, progress=False)
    assert res["miou"] == pytest.approx(1.0) and res["contour_f"] == pytest.approx(1.0)
    assert sum(not math.isnan(v) for v in res["per_class_iou"].values()) == 3   # bg, aeroplane, person
    # shifted by 7 px right and 4 px down (beyond the r = 5 tolerance): equals the slow reference
    pairs = []
    for i, g in zip(ids, gts):
        p = np.zeros_like(g)
        p[4:, 7:] = np.where(g == 255, 0, g)[:-4, :-7]
        save_label_png(tmp_path / "shift" / f"{i}.png", p)
        pairs.append((g, p))
    res = evaluate_dir(tmp_path / "shift", src, ids, 20, workers=2, class_names=names, progress=False)
    miou, _, cf, fs = _ref_dataset(pairs, 20)
    assert res["miou"] == pytest.approx(miou, abs=1e-12)
    assert res["contour_f"] == pytest.approx(cf, abs=1e-12)
    assert list(res["per_class_contour_f"].values()) == pytest.approx(fs, abs=1e-12, nan_ok=True)
    assert 0.5 < res["miou"] < 0.99 and 0.5 < res["contour_f"] < 0.999
