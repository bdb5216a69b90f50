"""Slow, straightforward reference of the evaluation (docs/METHOD.md section 7), for tests and the benchmark.

Deliberately independent of ``miou.py`` / ``contour.py``: plain Python loops over pixels, a
boundary function that reads the spec's shifted-copy definition literally, and a dilation done by
scanning each pixel's disk neighbourhood. Only meant for small images or a few hundred VOC images.
"""
from __future__ import annotations

import math

import numpy as np


def ref_confusion(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """(L, L) int64 confusion (rows GT, columns pred), GT 255 skipped, by a pixel loop."""
    conf = [[0] * num_labels for _ in range(num_labels)]
    for g, p in zip(gt.reshape(-1).tolist(), pred.reshape(-1).tolist()):
        if g == 255:
            continue
        conf[g][p] += 1
    return np.array(conf, np.int64)


def ref_boundary(mask) -> np.ndarray:
    """Boundary of a binary mask following the spec sentence by sentence, one pixel at a time."""
    m = np.asarray(mask).astype(bool).tolist()
    h, w = len(m), len(m[0]) if m else 0

    def at(i, j):  # shifted copies are zero beyond the border
        return m[i][j] if (0 <= i < h and 0 <= j < w) else False

    out = [[False] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            v = m[i][j]
            east, south, southeast = at(i, j + 1), at(i + 1, j), at(i + 1, j + 1)
            b = (v != east) or (v != south) or (v != southeast)
            if i == h - 1:
                b = v != east
            if j == w - 1:
                b = v != south
            if i == h - 1 and j == w - 1:
                b = False
            out[i][j] = b
    return np.array(out, bool).reshape(h, w)


def ref_radius(h: int, w: int) -> int:
    return math.ceil(0.008 * math.hypot(h, w))


def ref_match_count(b_from: np.ndarray, b_to: np.ndarray, r: int) -> int:
    """Number of pixels p with b_from[p] such that some q with b_to[q] has |q - p|^2 <= r^2,
    i.e. sum(b_from & dilate_disk(b_to, r)), by scanning disk neighbourhoods."""
    h, w = b_to.shape
    to = b_to.tolist()
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx <= r * r]
    count = 0
    ys, xs = np.nonzero(b_from)
    for y, x in zip(ys.tolist(), xs.tolist()):
        for dy, dx in offsets:
            yy, xx = y + dy, x + dx
            if 0 <= yy < h and 0 <= xx < w and to[yy][xx]:
                count += 1
                break
    return count


def ref_contour_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(4, N) int64: rows matches_gt, matches_pred, n_gt, n_pred for classes 1..N (every class)."""
    h, w = gt.shape
    r = ref_radius(h, w)
    gt = np.where(gt == 255, 0, gt)  # void -> background
    out = np.zeros((4, num_classes), np.int64)
    for c in range(1, num_classes + 1):
        bg = ref_boundary(gt == c)
        bp = ref_boundary(pred == c)
        out[0, c - 1] = ref_match_count(bg, bp, r)
        out[1, c - 1] = ref_match_count(bp, bg, r)
        out[2, c - 1] = int(bg.sum())
        out[3, c - 1] = int(bp.sum())
    return out


def ref_image_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int, skip_absent: bool = True):
    """(confusion (N+1, N+1), contour counts (4, N)) of one image.

    ``skip_absent`` only avoids the (costly, all-zero) loops for classes absent from both maps;
    the result is the same either way.
    """
    conf = ref_confusion(gt, pred, num_classes + 1)
    if not skip_absent:
        return conf, ref_contour_counts(gt, pred, num_classes)
    counts = np.zeros((4, num_classes), np.int64)
    present = set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())
    h, w = gt.shape
    r = ref_radius(h, w)
    for c in sorted(present):
        if not 1 <= c <= num_classes:
            continue
        bg = ref_boundary(gt == c)
        bp = ref_boundary(pred == c)
        counts[:, c - 1] = (ref_match_count(bg, bp, r), ref_match_count(bp, bg, r), bg.sum(), bp.sum())
    return conf, counts


def ref_scores(conf: np.ndarray, counts: np.ndarray):
    """(mIoU, per-label IoU list with NaN, contour F, per-class F list) with explicit loops."""
    L = conf.shape[0]
    ious = []
    for c in range(L):
        tp = int(conf[c, c])
        t = int(sum(conf[c, j] for j in range(L)))
        p = int(sum(conf[i, c] for i in range(L)))
        ious.append(float("nan") if t + p - tp == 0 else tp / (t + p - tp))
    valid = [v for v in ious if not math.isnan(v)]
    miou = sum(valid) / len(valid) if valid else float("nan")
    fs = []
    for c in range(counts.shape[1]):
        mg, mp, ng, npd = (int(v) for v in counts[:, c])
        label = c + 1
        occurs = ng + npd > 0 or any(conf[label, j] or conf[j, label] for j in range(L))
        if not occurs:
            fs.append(float("nan"))
        elif ng == 0 and npd == 0:
            fs.append(1.0)
        elif ng == 0 or npd == 0:
            fs.append(0.0)
        else:
            prec, rec = mp / npd, mg / ng
            fs.append(0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec))
    valid_f = [v for v in fs if not math.isnan(v)]
    return miou, ious, (sum(valid_f) / len(valid_f) if valid_f else float("nan")), fs
