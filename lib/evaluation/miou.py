"""Confusion matrices and mIoU (docs/METHOD.md section 7).

Conventions: label ids 0 (background) .. N (foreground class N-1), 255 void. ``num_labels`` below
is the number of *rows* of the confusion matrix, i.e. N + 1 (background included).

IoU of label c over a dataset, from the accumulated confusion matrix ``conf`` (rows = GT,
columns = prediction, void pixels excluded)::

    TP_c = conf[c, c],  T_c = sum_j conf[c, j],  P_c = sum_i conf[i, c]
    IoU_c = TP_c / (T_c + P_c - TP_c)

A label that never occurs in the GT nor in the prediction (T_c + P_c - TP_c = 0) has an undefined
IoU: it is reported as NaN and excluded from the mean (the usual ``nanmean`` convention).
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# Background thresholds of the eval_aff sweep: 0.00, 0.01, ..., 0.59 (docs/METHOD.md section 7).
SWEEP_THRESHOLDS = np.arange(60) / 100.0


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_labels: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_labels, num_labels) int64 confusion matrix, rows = GT label, columns = predicted label.

    ``gt`` and ``pred`` are integer maps of the same shape (H, W); GT pixels equal to
    ``ignore_index`` are skipped. Values must already be validated (GT in [0, num_labels) or
    ``ignore_index``, pred in [0, num_labels)).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"confusion_matrix: GT shape {gt.shape} != prediction shape {pred.shape}")
    L = int(num_labels)
    if L <= ignore_index <= 255 and gt.dtype == np.uint8 and pred.dtype == np.uint8:
        # Void rows land at index >= L*L and are cut off below (no boolean gather); the index
        # fits uint16 since 255 * L + L - 1 < 65536 for L <= 256.
        idx = gt.astype(np.uint16) * np.uint16(L) + pred
        return np.bincount(idx.reshape(-1), minlength=(ignore_index + 1) * L)[: L * L].reshape(L, L)
    g = gt.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = g != ignore_index
    return np.bincount(g[keep] * L + p[keep], minlength=L * L)[: L * L].reshape(L, L)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-label IoU (L,) float64 = TP / (T + P - TP); NaN where the label is absent from both."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    denom = conf.sum(1) + conf.sum(0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def miou_from_confusion(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-label IoU (L,)) from a confusion matrix; NaN labels are excluded from the mean.

    Returns mIoU = NaN when every label is NaN (empty confusion matrix).
    """
    iou = iou_from_confusion(conf)
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return miou, iou


def cam_fg_argmax(keys: np.ndarray, cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best foreground label and its score of a CAM artifact.

    keys (K,) foreground indices, cams (K, H, W) -> (label (H, W) uint8 = keys[argmax]+1,
    score (H, W) float32 = max_k cams_k). K = 0 gives label 0 and score 0 everywhere.
    """
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], np.uint8), np.zeros(cams.shape[1:], np.float32)
    am = cams.argmax(0)
    score = np.take_along_axis(cams, am[None], 0)[0]
    lut = (np.asarray(keys, np.int64) + 1).astype(np.uint8)
    return lut[am], score.astype(np.float32, copy=False)


def sweep_confusions(gt: np.ndarray, fg_label: np.ndarray, fg_score: np.ndarray, num_labels: int,
                     thresholds=SWEEP_THRESHOLDS, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrices (T, L, L) int64 for every fixed background threshold, in one pass.

    For threshold t the prediction is ``argmax([t, cams])`` with ties going to the background (the
    first channel), i.e. ``fg_label`` where ``fg_score > t`` else 0 -- exactly
    ``lib.io.cam_to_label(keys, cams, bg_threshold=t)`` (t compared in float32 as there).

    Let k(x) = #{i : t_i < score(x)} (thresholds sorted). Pixel x predicts ``fg_label`` for the
    thresholds i < k and background for i >= k, so one histogram over (gt, fg_label, k) and a
    cumulative sum over k give all T matrices.
    """
    t32 = np.asarray(thresholds, np.float64).astype(np.float32)
    order = np.argsort(t32, kind="stable")
    ts = t32[order]
    T, L = len(ts), int(num_labels)
    g = gt.reshape(-1).astype(np.int64)
    keep = g != ignore_index
    g = g[keep]
    f = fg_label.reshape(-1)[keep].astype(np.int64)
    k = np.searchsorted(ts, fg_score.reshape(-1)[keep].astype(np.float32), side="left")
    hist = np.bincount((g * L + f) * (T + 1) + k, minlength=L * L * (T + 1)).reshape(L, L, T + 1)
    le = np.cumsum(hist, axis=2)[:, :, :T]                 # pixels with k <= i -> background
    above = hist.sum(2, keepdims=True) - le                 # pixels with k > i  -> fg_label
    conf = np.ascontiguousarray(above.transpose(2, 0, 1))   # (T, L, L)
    conf[:, :, 0] += le.sum(1).T
    out = np.empty_like(conf)
    out[order] = conf
    return out
