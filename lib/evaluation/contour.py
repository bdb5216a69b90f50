"""Contour (boundary) F-score, exactly as docs/METHOD.md section 7 (the original contour_fscore.py).

Per image (H, W) and foreground label c in 1..N, with void (255) mapped to background:

* binary masks m_gt = (GT == c), m_pred = (pred == c);
* boundary map ``seg2bmap(m)`` (see there);
* tolerance r = ceil(0.008 * sqrt(H^2 + W^2)); D(b) = dilation of b by the disk x^2 + y^2 <= r^2;
* counts accumulated over the dataset, per class:
  matches_gt = sum(b_gt & D(b_pred)), matches_pred = sum(b_pred & D(b_gt)),
  n_gt = sum(b_gt), n_pred = sum(b_pred).

Per class: a class that occurs nowhere (neither in the GT nor in the prediction of any image)
has F = NaN and is left out of the mean, as its IoU is (docs/METHOD.md sections 7 and 8.3);
otherwise n_gt = n_pred = 0 (masks covering whole images) -> F = 1; exactly one of them 0 -> F = 0;
else P = matches_pred / n_pred, R = matches_gt / n_gt, F = 2PR / (P + R) (0 when P + R = 0).
Score = mean of F over the classes that occur (NaN when none does).

Count arrays are (4, N) int64 with rows ``MATCH_GT, MATCH_PRED, N_GT, N_PRED`` and column c-1 for
label c.
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

MATCH_GT, MATCH_PRED, N_GT, N_PRED = range(4)
BOUND_TH = 0.008


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map (H, W) bool of a binary mask (H, W).

    b = m ^ E(m) | m ^ S(m) | m ^ SE(m), where E/S/SE are the east, south and south-east shifted
    copies (E(m)[i, j] = m[i, j+1], zero beyond the border); then the last row is overwritten by
    m ^ E(m), the last column by m ^ S(m), and the bottom-right corner is 0. Equivalently:
    interior pixels compare with their three forward neighbours, last-row pixels with the east
    one only, last-column pixels with the south one only.
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"seg2bmap: mask must be 2-D, got shape {m.shape}")
    b = np.zeros_like(m)
    c = m[:-1, :-1]
    b[:-1, :-1] = (c ^ m[:-1, 1:]) | (c ^ m[1:, :-1]) | (c ^ m[1:, 1:])
    b[-1, :-1] = m[-1, :-1] ^ m[-1, 1:]
    b[:-1, -1] = m[:-1, -1] ^ m[1:, -1]
    return b


def tolerance_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """r = ceil(bound_th * sqrt(H^2 + W^2)) (float64, as the original), e.g. 500x375 -> 5."""
    return int(math.ceil(bound_th * math.sqrt(height * height + width * width)))


@lru_cache(maxsize=64)
def disk_kernel(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 structuring element, 1 where x^2 + y^2 <= r^2."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation (H, W) bool of a boundary map by the disk of ``radius``; outside = 0."""
    if radius <= 0:
        return np.asarray(b, bool).copy()
    # cv2 ignores out-of-image pixels for dilation (default border = -inf), i.e. zero padding.
    return cv2.dilate(np.asarray(b, bool).view(np.uint8), disk_kernel(radius)).view(bool)


def _label_presence(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.reshape(-1), minlength=256) > 0


def contour_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int, radius: int | None = None,
                   gt_present: np.ndarray | None = None,
                   pred_present: np.ndarray | None = None) -> np.ndarray:
    """Boundary match counts (4, N) int64 of one image; N = ``num_classes`` foreground classes.

    gt (H, W) uint8 in 0..N or 255 (void, i.e. background here), pred (H, W) uint8 in 0..N.
    ``radius`` defaults to ``tolerance_radius(H, W)``. Classes absent from both masks are skipped
    (all their counts are 0); ``gt_present``/``pred_present`` (256,) bool may be passed when the
    caller already has label histograms.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"contour_counts: GT shape {gt.shape} != prediction shape {pred.shape}")
    n = int(num_classes)
    counts = np.zeros((4, n), np.int64)
    h, w = gt.shape
    r = tolerance_radius(h, w) if radius is None else int(radius)
    gp = _label_presence(gt) if gt_present is None else gt_present
    pp = _label_presence(pred) if pred_present is None else pred_present
    for c in np.flatnonzero(gp[1:n + 1] | pp[1:n + 1]) + 1:
        m_gt, m_pr = gt == c, pred == c
        # Work on the union bounding box grown by one pixel: every boundary pixel lies inside it
        # (a boundary pixel is in a mask or has one as E/S/SE neighbour), the grown border rows and
        # columns are 0 in both the crop and the full image, and the crop's last row/column is
        # either such an empty margin or the image's own last row/column -- so seg2bmap on the
        # crop equals the full-image map restricted to it, and zero-padded dilation is exact for
        # the pixels we count.
        rows = np.flatnonzero((m_gt | m_pr).any(1))
        cols = np.flatnonzero((m_gt[rows[0]:rows[-1] + 1] | m_pr[rows[0]:rows[-1] + 1]).any(0))
        win = (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)), slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)))
        b_gt = seg2bmap(m_gt[win]) if gp[c] else None
        b_pr = seg2bmap(m_pr[win]) if pp[c] else None
        n_gt = int(np.count_nonzero(b_gt)) if b_gt is not None else 0
        n_pr = int(np.count_nonzero(b_pr)) if b_pr is not None else 0
        counts[N_GT, c - 1] = n_gt
        counts[N_PRED, c - 1] = n_pr
        if n_gt == 0 or n_pr == 0:
            continue  # no boundary on one side -> no match on either side
        counts[MATCH_GT, c - 1] = np.count_nonzero(b_gt & dilate(b_pr, r))
        counts[MATCH_PRED, c - 1] = np.count_nonzero(b_pr & dilate(b_gt, r))
    return counts


def contour_fscore_from_counts(counts: np.ndarray, present: np.ndarray | None = None
                               ) -> tuple[float, np.ndarray]:
    """(mean F over the classes that occur, per-class F (N,) float64 with NaN for the others)
    from accumulated (4, N) counts.

    ``present`` (N,) bool: whether class c-1 occurs in the GT or the prediction of some image
    (e.g. from the confusion matrix). None: a class occurs when it has a boundary pixel, which
    misses only masks covering whole images (those score F = 1 when ``present`` says so).
    """
    counts = np.asarray(counts, np.int64)
    mg, mp, ng, npr = (counts[i].astype(np.float64) for i in range(4))
    occurs = (ng + npr) > 0
    if present is not None:
        occurs |= np.asarray(present, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = mp / np.where(npr > 0, npr, 1.0)
        rec = mg / np.where(ng > 0, ng, 1.0)
        s = prec + rec
        f = np.where(s > 0, 2.0 * prec * rec / np.where(s > 0, s, 1.0), 0.0)
    f = np.where((ng == 0) & (npr == 0), 1.0, np.where((ng == 0) | (npr == 0), 0.0, f))
    f = np.where(occurs, f, np.nan)
    return (float(f[occurs].mean()) if occurs.any() else float("nan")), f
