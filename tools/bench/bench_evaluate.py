"""Benchmark of the evaluation toolkit: fast ``evaluate_dir`` path vs the slow loop reference.

    python -m tools.bench.bench_evaluate [--num 1000] [--eval_workers K] [--ref_num 50] [--seed 0]

Generates ``--num`` synthetic VOC-size (500x375) GT / prediction label PNG pairs in a temporary
folder (random ellipses and boxes of a few of 20 classes; GT with 5-px void bands along object
boundaries; prediction = GT shifted by a few pixels, morphologically perturbed, sometimes with a
swapped class or a false positive), then times

* the slow reference (``lib.evaluation.reference``, pure-Python pixel loops) on the first
  ``--ref_num`` images (PNG decoding included),
* ``accumulate_counts`` (the engine of ``evaluate_dir``) with 1 worker and with ``--eval_workers``,

checks that the integer counts (confusion matrix, boundary counts) of the fast path and of the
reference are identical on the common subset, and prints a table of images/s and speed-ups.
Exit status 1 when the counts differ.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from lib.errors import check_args, run_main
from lib.evaluation.contour import contour_fscore_from_counts, dilate, seg2bmap
from lib.evaluation.evaluate import accumulate_counts, default_workers
from lib.evaluation.miou import miou_from_confusion
from lib.evaluation.reference import ref_image_counts, ref_scores
from lib.io import load_label_png, save_label_png

H, W, N = 375, 500, 20


def make_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (GT, prediction) pair of uint8 (375, 500) label maps."""
    gt = np.zeros((H, W), np.uint8)
    classes = rng.choice(np.arange(1, N + 1), int(rng.integers(1, 4)), replace=False)
    for _ in range(int(rng.integers(1, 5))):
        c = int(rng.choice(classes))
        cx, cy = int(rng.integers(0, W)), int(rng.integers(0, H))
        if rng.random() < 0.7:
            axes = (int(rng.integers(10, 160)), int(rng.integers(10, 130)))
            cv2.ellipse(gt, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        else:
            cv2.rectangle(gt, (cx, cy), (cx + int(rng.integers(10, 200)), cy + int(rng.integers(10, 160))), c, -1)
    pred = gt.copy()
    dy, dx = (int(v) for v in rng.integers(-6, 7, 2))
    pred = np.roll(pred, (dy, dx), (0, 1))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(rng.integers(1, 6)) + 1,) * 2)
    pred = cv2.dilate(pred, k) if rng.random() < 0.5 else cv2.erode(pred, k)
    if rng.random() < 0.2:
        present = np.unique(pred[pred > 0])
        if present.size:
            pred[pred == rng.choice(present)] = int(rng.integers(1, N + 1))
    if rng.random() < 0.3:
        cv2.circle(pred, (int(rng.integers(0, W)), int(rng.integers(0, H))), int(rng.integers(5, 60)),
                   int(rng.integers(1, N + 1)), -1)
    gt[dilate(seg2bmap(gt > 0), 2)] = 255   # VOC-like void band around objects
    return gt, pred


def generate(root: Path, num: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(num):
        gt, pred = make_pair(rng)
        image_id = f"{i:06d}"
        save_label_png(root / "gt" / f"{image_id}.png", gt)
        save_label_png(root / "pred" / f"{image_id}.png", pred)
        ids.append(image_id)
    return ids


def run_reference(root: Path, ids: list[str]):
    conf = np.zeros((N + 1, N + 1), np.int64)
    cnt = np.zeros((4, N), np.int64)
    for i in ids:
        gt = load_label_png(root / "gt" / f"{i}.png")
        pred = load_label_png(root / "pred" / f"{i}.png")
        c, k = ref_image_counts(gt, pred, N)
        conf += c
        cnt += k
    return conf, cnt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=1000, help="number of synthetic image pairs")
    ap.add_argument("--eval_workers", "--workers", dest="eval_workers", type=int,
                    default=default_workers(), help="workers of the fast path")
    ap.add_argument("--ref_num", type=int, default=50, help="images timed with the slow reference")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    check_args(args, {"num": ">= 1", "workers": ">= 1", "ref_num": ">= 1"})
    ref_num = min(args.ref_num, args.num)

    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        ids = generate(root, args.num, args.seed)
        print(f"generated {args.num} pairs {W}x{H}, N={N} in {time.perf_counter() - t0:.1f} s", flush=True)

        rows = []
        t0 = time.perf_counter()
        conf_r, cnt_r = run_reference(root, ids[:ref_num])
        rows.append(("slow reference (pixel loops)", ref_num, 1, time.perf_counter() - t0))

        sub = accumulate_counts(root / "pred", root / "gt", ids[:ref_num], N, workers=1, progress=False)
        same_conf = np.array_equal(sub.confusion, conf_r)
        same_cnt = np.array_equal(sub.contour, cnt_r)
        miou_r, _, cf_r, _ = ref_scores(conf_r, cnt_r)
        miou_f = miou_from_confusion(sub.confusion)[0]
        cf_f = contour_fscore_from_counts(sub.contour)[0]

        for w in sorted({1, max(1, args.eval_workers)}):
            t0 = time.perf_counter()
            full = accumulate_counts(root / "pred", root / "gt", ids, N, workers=w, progress=False)
            rows.append(("evaluate_dir (fast)", args.num, w, time.perf_counter() - t0))

    ref_ips = rows[0][1] / rows[0][3]
    print(f"\n{'implementation':<30} {'images':>7} {'workers':>8} {'seconds':>9} {'images/s':>10} {'speed-up':>9}")
    for name, n, w, sec in rows:
        ips = n / sec
        print(f"{name:<30} {n:>7} {w:>8} {sec:>9.2f} {ips:>10.1f} {ips / ref_ips:>8.1f}x")
    print(f"\ncommon subset ({ref_num} images): confusion identical: {same_conf}, boundary counts identical: "
          f"{same_cnt}; mIoU {100 * miou_f:.4f}% (ref {100 * miou_r:.4f}%), "
          f"contour F {100 * cf_f:.4f}% (ref {100 * cf_r:.4f}%)")
    m_all, _ = miou_from_confusion(full.confusion)
    print(f"all {args.num} images: mIoU {100 * m_all:.2f}%, contour F {100 * contour_fscore_from_counts(full.contour)[0]:.2f}%")
    return 0 if (same_conf and same_cnt) else 1


if __name__ == "__main__":
    run_main(main, "bench_evaluate")
