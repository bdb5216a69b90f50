"""Dataset-level evaluation driver: mIoU + contour F-score of a prediction folder (docs/METHOD.md section 7).

Predictions (``pred_type``):

* ``png``: label PNGs ``<pred_dir>/<id>.png`` (values 0..N);
* ``cam``: CAM artifacts ``<pred_dir>/<id>.npz`` -> ``lib.io.cam_to_label`` with background score
  ``bg_threshold`` or, by default, 1 - sum_k cams_k (an image with no class is all background);
* ``crf``: CRF artifacts ``<pred_dir>/<id>.npz`` -> ``lib.io.crf_to_label`` (argmax of the maps).

GT: palette PNGs ``<gt_dir>/<id>.png`` with values 0..N or 255 (void).

Streaming: ids are cut into chunks, each chunk is evaluated by a worker (multiprocessing Pool,
``imap_unordered``) which returns only summed count arrays -- a (N+1, N+1) confusion matrix,
(4, N) boundary counts and, for the background sweep, (60, N+1, N+1) confusions -- so memory does
not grow with the number of images.

Conventions (docs/METHOD.md sections 7 and 8.3): a label absent from both GT and prediction over
the whole dataset has IoU NaN and contour F NaN and is left out of both means (nanmean), so a
``num_classes`` above the classes present changes neither score; a class predicted but absent
from the GT scores 0 in both. In the returned dict NaN stays ``float('nan')``;
``save_results_json`` writes it as ``null``.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.datasets.classes import COCO_CLASSES, VOC_CLASSES, read_class_file
from lib.errors import UserError
from lib.io import atomic_path, cam_to_label, crf_to_label, load_cam, load_crf, load_label_png
from lib.evaluation.contour import contour_counts, contour_fscore_from_counts
from lib.evaluation.miou import (SWEEP_THRESHOLDS, cam_fg_argmax, confusion_matrix,
                                 miou_from_confusion, sweep_confusions)

PRED_TYPES = ("png", "cam", "crf")
_PRED_EXT = {"png": ".png", "cam": ".npz", "crf": ".npz"}


# ----------------------------------------------------------------------------- class names

def resolve_class_names(spec, gt_dir, num_classes: int) -> list[str]:
    """The N foreground class names.

    ``spec``: a list of names, a ``classes.txt`` path (one name per line, optionally preceded by
    ``background``), ``'voc'`` / ``'coco'``, or None for the default: ``<gt_dir>/../classes.txt``
    when it exists, else the VOC names for N = 20, COCO for N = 80, else ``class_0..class_{N-1}``
    (``class_k`` is label id k + 1).
    """
    n = int(num_classes)
    source = "class names"
    if spec is None:
        cand = Path(gt_dir) / ".." / "classes.txt"
        if cand.is_file():
            names, source = list(read_class_file(cand)), str(cand)
        elif n in (20, 80):
            names = list(VOC_CLASSES if n == 20 else COCO_CLASSES)
        else:
            names = [f"class_{k}" for k in range(n)]
    elif isinstance(spec, (list, tuple)):
        names = [str(s) for s in spec]
    elif str(spec).lower() in ("voc", "coco"):
        names = list(VOC_CLASSES if str(spec).lower() == "voc" else COCO_CLASSES)
        source = f"'{spec}' class names"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"class names file {path} does not exist (or use 'voc' / 'coco')")
        names, source = list(read_class_file(path)), str(path)
    if len(names) == n + 1 and names[0].lower() == "background":
        names = names[1:]
    if len(names) != n:
        raise UserError(f"{source}: {len(names)} names for num_classes={n}")
    if len(set(names)) != n or "background" in names:
        raise UserError(f"{source}: class names must be unique and not 'background'")
    return names


# ----------------------------------------------------------------------------- per image

def _check_values(label: np.ndarray, num_classes: int, path, allow_void: bool) -> np.ndarray:
    """Label histogram (256,) int64; raises ValueError naming ``path`` on out-of-range values."""
    hist = np.bincount(label.reshape(-1), minlength=256)
    bad = np.flatnonzero(hist[num_classes + 1:]) + num_classes + 1
    if allow_void:
        bad = bad[bad != 255]
    if bad.size:
        allowed = f"0..{num_classes}" + (" or 255 (void)" if allow_void else "")
        raise UserError(f"{path}: label values {bad.tolist()} out of range (allowed {allowed})")
    return hist


def load_gt(gt_dir, image_id: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """GT label map (H, W) uint8 and its value histogram (256,)."""
    path = Path(gt_dir) / f"{image_id}.png"
    if not path.is_file():
        raise FileNotFoundError(f"ground truth {path} missing (image id '{image_id}')")
    gt = load_label_png(path)
    if gt.ndim != 2:
        raise UserError(f"{path}: GT must be a single-channel label PNG, got shape {gt.shape}")
    return gt, _check_values(gt, num_classes, path, allow_void=True)


def load_prediction(pred_dir, image_id: str, pred_type: str, num_classes: int,
                    bg_threshold: float | None = None, with_fg: bool = False):
    """Predicted label map (H, W) uint8 of one image (and, if ``with_fg``, the CAM's best foreground
    label and score maps used by the background sweep). Raises on a missing/invalid artifact."""
    path = Path(pred_dir) / f"{image_id}{_PRED_EXT[pred_type]}"
    if not path.is_file():
        raise FileNotFoundError(f"prediction {path} missing (image id '{image_id}')")
    fg = None
    if pred_type == "png":
        label = load_label_png(path)
        if label.ndim != 2:
            raise UserError(f"{path}: prediction must be a single-channel label PNG, got shape {label.shape}")
    elif pred_type == "cam":
        keys, cams = load_cam(path)
        if keys.size and (keys.min() < 0 or keys.max() >= num_classes):
            raise UserError(f"{path}: CAM keys {keys.tolist()} out of range 0..{num_classes - 1}")
        label = cam_to_label(keys, cams, bg_threshold=bg_threshold)
        if with_fg:
            fg = cam_fg_argmax(keys, cams)
    else:
        keys, probs = load_crf(path)
        if keys.size == 0 or keys.min() < 0 or keys.max() > num_classes:
            raise UserError(f"{path}: CRF keys {keys.tolist()} out of range 0..{num_classes}")
        label = crf_to_label(keys, probs)
    return (label, fg, path) if with_fg else (label, path)


def image_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int, gt_hist=None, pred_hist=None):
    """(confusion (N+1, N+1) int64, boundary counts (4, N) int64) of one validated image pair."""
    conf = confusion_matrix(gt, pred, num_classes + 1)
    gp = None if gt_hist is None else gt_hist > 0
    pp = None if pred_hist is None else pred_hist > 0
    return conf, contour_counts(gt, pred, num_classes, gt_present=gp, pred_present=pp)


def _evaluate_one(cfg: dict, image_id: str):
    n = cfg["num_classes"]
    gt, gt_hist = load_gt(cfg["gt_dir"], image_id, n)
    out = load_prediction(cfg["pred_dir"], image_id, cfg["pred_type"], n, cfg["bg_threshold"],
                          with_fg=cfg["bg_sweep"])
    pred, path = out[0], out[-1]
    if pred.shape != gt.shape:
        raise UserError(f"{path}: prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) does not match "
                         f"ground truth {Path(cfg['gt_dir']) / (image_id + '.png')} size "
                         f"{gt.shape[1]}x{gt.shape[0]}")
    pred_hist = _check_values(pred, n, path, allow_void=False)
    conf, cnt = image_counts(gt, pred, n, gt_hist, pred_hist)
    sweep = None
    if cfg["bg_sweep"]:
        fg_label, fg_score = out[1]
        sweep = sweep_confusions(gt, fg_label, fg_score, n + 1)
    return conf, cnt, sweep


def _process_chunk(task):
    cfg, ids = task
    n = cfg["num_classes"]
    conf = np.zeros((n + 1, n + 1), np.int64)
    cnt = np.zeros((4, n), np.int64)
    sweep = np.zeros((len(SWEEP_THRESHOLDS), n + 1, n + 1), np.int64) if cfg["bg_sweep"] else None
    for image_id in ids:
        c, k, s = _evaluate_one(cfg, image_id)
        conf += c
        cnt += k
        if sweep is not None:
            sweep += s
    return len(ids), conf, cnt, sweep


def _init_worker():
    import cv2
    cv2.setNumThreads(1)  # parallelism comes from the pool; avoid oversubscribing cores


# ----------------------------------------------------------------------------- dataset

@dataclass
class EvalCounts:
    """Accumulated integer counts of a dataset (exactly comparable across implementations)."""
    num_images: int
    confusion: np.ndarray        # (N+1, N+1) int64, rows GT, columns prediction
    contour: np.ndarray          # (4, N) int64: matches_gt, matches_pred, n_gt, n_pred
    sweep: np.ndarray | None     # (60, N+1, N+1) int64 per background threshold, or None


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _check_args(pred_type, num_classes, bg_threshold, bg_sweep):
    if pred_type not in PRED_TYPES:
        raise UserError(f"pred_type must be one of {PRED_TYPES}, got {pred_type!r}")
    if not 1 <= int(num_classes) <= 254:
        raise UserError(f"num_classes must be in 1..254, got {num_classes}")
    if bg_threshold is not None and pred_type != "cam":
        raise UserError("bg_threshold only applies to CAM predictions (pred_type='cam')")
    if bg_sweep and pred_type != "cam":
        raise UserError("the background threshold sweep only applies to CAM predictions (pred_type='cam')")


def _check_files_exist(pred_dir, gt_dir, ids, pred_type):
    for what, folder, ext in (("ground truth", gt_dir, ".png"), ("prediction", pred_dir, _PRED_EXT[pred_type])):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
        missing = [i for i in ids if not os.path.isfile(os.path.join(folder, i + ext))]
        if missing:
            shown = ", ".join(str(Path(folder) / (i + ext)) for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise FileNotFoundError(f"{what} missing for {len(missing)} of {len(ids)} listed ids: {shown}{more}")


def accumulate_counts(pred_dir, gt_dir, ids, num_classes: int, pred_type: str = "png",
                      bg_threshold: float | None = None, workers: int | None = None,
                      bg_sweep: bool = False, progress: bool = True,
                      chunksize: int | None = None) -> EvalCounts:
    """Stream over ``ids`` and sum the per-image counts (see module docstring)."""
    ids = [str(i) for i in ids]
    if not ids:
        raise UserError("no image ids to evaluate (empty list)")
    seen: set[str] = set()
    for i in ids:  # a repeated id would be scored twice (read_list refuses it in a list file)
        if i in seen:
            raise UserError(f"image id {i!r} is given twice; each image must be scored once")
        seen.add(i)
    _check_args(pred_type, num_classes, bg_threshold, bg_sweep)
    _check_files_exist(pred_dir, gt_dir, ids, pred_type)
    n = int(num_classes)
    cfg = dict(pred_dir=str(pred_dir), gt_dir=str(gt_dir), pred_type=pred_type, num_classes=n,
               bg_threshold=None if bg_threshold is None else float(bg_threshold), bg_sweep=bool(bg_sweep))
    workers = default_workers() if workers is None else max(1, int(workers))
    if chunksize is None:
        chunksize = max(1, min(32, math.ceil(len(ids) / (workers * 8))))
    tasks = [(cfg, ids[i:i + chunksize]) for i in range(0, len(ids), chunksize)]
    workers = min(workers, len(tasks))

    conf = np.zeros((n + 1, n + 1), np.int64)
    cnt = np.zeros((4, n), np.int64)
    sweep = np.zeros((len(SWEEP_THRESHOLDS), n + 1, n + 1), np.int64) if bg_sweep else None
    from tqdm import tqdm
    with tqdm(total=len(ids), disable=not progress, unit="img", desc="evaluate", file=sys.stderr) as bar:
        def consume(parts):
            nonlocal conf, cnt
            for num, c, k, s in parts:
                conf += c
                cnt += k
                if sweep is not None:
                    sweep[...] += s
                bar.update(num)

        if workers <= 1:
            consume(map(_process_chunk, tasks))
        else:
            with multiprocessing.get_context().Pool(workers, initializer=_init_worker) as pool:
                consume(pool.imap_unordered(_process_chunk, tasks))
    return EvalCounts(len(ids), conf, cnt, sweep)


def summarize(counts: EvalCounts, class_names: list[str]) -> dict:
    """Result dict from counts: num_images, miou, contour_f, per_class_iou (background + N names),
    per_class_contour_f (N names); fractions in [0, 1], NaN for a class that occurs nowhere. With a sweep, also
    ``bg_sweep`` = {thresholds, miou (per threshold), best_threshold, best_miou}."""
    miou, iou = miou_from_confusion(counts.confusion)
    conf = counts.confusion
    present = (conf.sum(0) + conf.sum(1))[1:] > 0  # foreground classes with a GT or predicted pixel
    cf, f = contour_fscore_from_counts(counts.contour, present)
    names = list(class_names)
    res = {
        "num_images": int(counts.num_images),
        "miou": miou,
        "contour_f": cf,
        "per_class_iou": {nm: float(v) for nm, v in zip(["background"] + names, iou)},
        "per_class_contour_f": {nm: float(v) for nm, v in zip(names, f)},
    }
    if counts.sweep is not None:
        mious = [miou_from_confusion(c)[0] for c in counts.sweep]
        arr = np.array(mious)
        best = int(np.nanargmax(arr)) if not np.all(np.isnan(arr)) else 0
        res["bg_sweep"] = {"thresholds": [round(float(t), 2) for t in SWEEP_THRESHOLDS], "miou": mious,
                           "best_threshold": round(float(SWEEP_THRESHOLDS[best]), 2), "best_miou": mious[best]}
    return res


def evaluate_dir(pred_dir, gt_dir, ids, num_classes: int, pred_type: str = "png",
                 bg_threshold: float | None = None, workers: int | None = None, class_names=None,
                 bg_sweep: bool = False, progress: bool = True) -> dict:
    """Evaluate ``<pred_dir>/<id>.{png,npz}`` against ``<gt_dir>/<id>.png`` over ``ids``.

    ``num_classes`` = N foreground classes (labels 0..N); ``workers`` defaults to min(4, cpus);
    ``class_names`` as in ``resolve_class_names``. Returns the ``summarize`` dict. Raises
    FileNotFoundError (missing prediction/GT) or ValueError (size mismatch, out-of-range labels,
    unreadable artifact), naming the file.
    """
    names = resolve_class_names(class_names, gt_dir, num_classes)
    counts = accumulate_counts(pred_dir, gt_dir, ids, num_classes, pred_type, bg_threshold, workers,
                               bg_sweep=bg_sweep, progress=progress)
    return summarize(counts, names)


# ----------------------------------------------------------------------------- output

def _nan_to_none(x):
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def results_to_json(result: dict) -> dict:
    """JSON-ready copy of a result dict (NaN -> None)."""
    return _nan_to_none(result)


def save_results_json(result: dict, path) -> None:
    """Write the result dict as JSON atomically (NaN -> null)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(results_to_json(result), f, indent=2, allow_nan=False)
            f.write("\n")


def _pct(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{100.0 * v:6.2f}"


def format_results(result: dict, title: str | None = None) -> str:
    """Human-readable table: mIoU and contour F in percent, then per-class IoU and contour F."""
    names_iou = list(result["per_class_iou"])
    width = max(12, max(len(s) for s in names_iou))
    lines = []
    if title:
        lines.append(f"== {title} ==")
    lines.append(f"images: {result['num_images']}   mIoU: {_pct(result['miou']).strip()}%   "
                 f"contour F: {_pct(result['contour_f']).strip()}%")
    lines.append(f"{'label':>5}  {'class':<{width}}  {'IoU %':>7}  {'contour F %':>11}")
    for label, nm in enumerate(names_iou):
        f = result["per_class_contour_f"].get(nm) if label > 0 else None
        fs = "-" if f is None else _pct(f)
        lines.append(f"{label:>5}  {nm:<{width}}  {_pct(result['per_class_iou'][nm]):>7}  {fs:>11}")
    lines.append(f"{'':>5}  {'mean':<{width}}  {_pct(result['miou']):>7}  {_pct(result['contour_f']):>11}")
    if any(math.isnan(v) for v in result["per_class_iou"].values()):
        lines.append("nan = label absent from GT and prediction everywhere: left out of both means "
                     "(docs/METHOD.md section 7)")
    return "\n".join(lines)


def format_sweep(sweep: dict) -> str:
    """Table of mIoU per background threshold and the best one."""
    lines = ["background threshold sweep (CAM):", f"{'t':>5}  {'mIoU %':>7}"]
    for t, m in zip(sweep["thresholds"], sweep["miou"]):
        lines.append(f"{t:5.2f}  {_pct(m):>7}")
    lines.append(f"best threshold {sweep['best_threshold']:.2f}: mIoU {_pct(sweep['best_miou']).strip()}%")
    return "\n".join(lines)
