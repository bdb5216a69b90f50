"""Artifact I/O shared by every stage: atomic writes, CAM/CRF score maps, label PNGs.

Artifact formats (no pickle anywhere; every ``np.load`` uses ``allow_pickle=False``):

* **CAM file** ``<id>.npz`` (stage 1 ``cam/``): ``keys`` int64 (K,) — the *foreground* class
  indices 0..C-1 of the present classes, ascending; ``cams`` float32 (K, H, W) in [0, 1].
  An image with no foreground label has K = 0 (``cams`` shape (0, H, W)).
* **CRF file** ``<id>.npz`` (stage 1 ``crf/alpha_*``): ``keys`` int64 (K+1,) — 0 for background
  then k+1 for each present foreground class k; ``probs`` float32 (K+1, H, W), the dense-CRF
  probability of each channel, in [0, 1].
* The readers (``load_cam``, ``load_crf``) reject NaN/inf, values outside [0, 1] (beyond
  ``RANGE_TOL``) and unsorted or negative keys with a ``UserError`` naming the file; the savers
  refuse non-finite maps with a ``RunError``, so inference never writes them.
* **Label PNG** ``<id>.png``: 8-bit palette PNG (VOC palette), pixel value = class id
  (0 background, k+1 foreground class k, 255 void).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lib.errors import RunError, UserError

# Float32 rounding of a normalised map may land a hair above 1; anything beyond this is corrupt.
RANGE_TOL = 1e-3


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary file name next to ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves no half-written artifact under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the artifact the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_npz(path, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise UserError(f"{path}: missing arrays {missing} (has {z.files})")
            return tuple(z[n] for n in names)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: does not exist") from None
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz artifact ({e})") from e


def check_scores(path, name: str, x: np.ndarray, hi: float | None = 1.0) -> None:
    """Reject a score map that is non-finite or outside [0, ``hi``] (None: no upper bound).

    Raises ``UserError("<path>: <name> ...")``; vectorised, one pass per condition.
    """
    if x.size == 0:
        return
    if not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise UserError(f"{path}: {name} has {bad} non-finite values (NaN/inf); the artifact is "
                        f"corrupt, recompute it")
    lo_v, hi_v = float(x.min()), float(x.max())
    if lo_v < -RANGE_TOL or (hi is not None and hi_v > hi + RANGE_TOL):
        raise UserError(f"{path}: {name} values span [{lo_v:.4g}, {hi_v:.4g}], outside the allowed "
                        f"[0, {hi:g}]")


def _check_keys(path, keys: np.ndarray) -> None:
    if keys.size and (keys.min() < 0 or np.any(np.diff(keys) <= 0)):
        raise UserError(f"{path}: keys {keys.tolist()} must be distinct non-negative class ids in "
                        f"ascending order")


def check_finite_output(x, what: str) -> None:
    """An inference output about to be written must be finite; else ``RunError`` naming ``what``
    (the image id / file), so no NaN artifact is ever written."""
    finite = x.isfinite().all() if hasattr(x, "isfinite") else np.isfinite(np.asarray(x)).all()
    if not bool(finite):  # a torch tensor is checked where it lives (GPU or CPU)
        raise RunError(f"{what}: the network produced non-finite scores (NaN/inf); nothing "
                       f"written (are the weights corrupt or diverged?)")


def voc_palette() -> np.ndarray:
    """The 256x3 PASCAL VOC colour map (bit-interleaved), uint8."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_PALETTE = voc_palette().reshape(-1).tolist()


def _save_maps(path, keys, maps, name: str) -> None:
    """Write a score-map artifact: ``keys`` int64 (K,) and ``<name>`` float32 (K, H, W)."""
    keys = np.asarray(keys, np.int64).reshape(-1)
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or maps.shape[0] != keys.shape[0]:
        raise ValueError(f"{path}: {name} shape {maps.shape} does not match {keys.shape[0]} keys")
    check_finite_output(maps, str(path))
    _save_npz(path, **{"keys": keys, name: maps})


def _load_maps(path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a score-map artifact: (keys (K,) int64, ``<name>`` (K, H, W) float32)."""
    keys, maps = _load_npz(path, ("keys", name))
    if maps.ndim != 3 or keys.ndim != 1 or maps.shape[0] != keys.shape[0]:
        raise UserError(f"{path}: {name} shape {maps.shape} does not match {keys.shape[0]} keys")
    _check_keys(path, keys)
    check_scores(path, name, maps)
    return keys.astype(np.int64), maps.astype(np.float32, copy=False)


def save_cam(path, keys, cams) -> None:
    """Save a stage-1 CAM artifact. ``keys`` (K,) foreground ids, ``cams`` (K, H, W) in [0, 1]."""
    _save_maps(path, keys, cams, "cams")


def load_cam(path) -> tuple[np.ndarray, np.ndarray]:
    """Load a CAM artifact: (keys (K,) int64, cams (K, H, W) float32)."""
    return _load_maps(path, "cams")


def save_crf(path, keys, probs) -> None:
    """Save a CRF artifact. ``keys`` (K+1,) with 0 = background, k+1 = class k; ``probs`` (K+1, H, W)."""
    _save_maps(path, keys, probs, "probs")


def load_crf(path) -> tuple[np.ndarray, np.ndarray]:
    """Load a CRF artifact: (keys (K+1,) int64 with 0 = background, probs (K+1, H, W) float32)."""
    return _load_maps(path, "probs")


def channel_class_ids(keys) -> np.ndarray:
    """Class id of each channel of a [background, present classes] stack: (K,) foreground ids
    -> (K+1,) int64 ``[0, k_1+1, ..., k_K+1]`` (the CRF artifact's ``keys``)."""
    return np.concatenate([[0], np.asarray(keys, np.int64).reshape(-1) + 1]).astype(np.int64)


def scores_to_label(scores, keys) -> np.ndarray:
    """(H, W) uint8 class ids of the argmax channel of (K+1, H, W) scores (numpy or torch) over
    [background, the classes ``keys``]."""
    idx = scores.argmax(0)
    idx = idx.cpu().numpy() if hasattr(idx, "cpu") else idx
    return channel_class_ids(keys).astype(np.uint8)[idx]


def cam_to_label(keys, cams, bg_threshold: float | None = None, shape=None) -> np.ndarray:
    """Label map (H, W) uint8 from a CAM artifact.

    Background score = ``bg_threshold`` if given, else ``1 - sum_k cams_k`` (docs/METHOD.md section 7);
    label = argmax over [bg, cams], mapped to class ids (0 background, k+1 class k).
    An artifact with no class gives all background (``shape`` needed only when K = 0 and the
    stored array has no spatial size).
    """
    keys = np.asarray(keys, np.int64)
    if cams.shape[0] == 0:
        h, w = cams.shape[1:] if shape is None else shape
        return np.zeros((h, w), np.uint8)
    bg = np.full(cams.shape[1:], bg_threshold, np.float32) if bg_threshold is not None \
        else 1.0 - cams.sum(0)
    return scores_to_label(np.concatenate([bg[None], cams], 0), keys)


def crf_to_label(keys, probs) -> np.ndarray:
    """Label map (H, W) uint8 = class id of the argmax channel of a CRF artifact."""
    return np.asarray(keys, np.int64).astype(np.uint8)[probs.argmax(0)]


def save_label_png(path, label: np.ndarray) -> None:
    """Save an (H, W) class-id map as an 8-bit VOC-palette PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: label must be 2-D, got shape {label.shape}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_image(path) -> np.ndarray:
    """RGB image as (H, W, 3) uint8 (writable); FileNotFoundError / UserError name the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except OSError as e:  # a truncated or corrupt file
        raise UserError(f"{path}: cannot read image ({e})") from e


def load_label_png(path) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 class ids (palette indices, not colours)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise UserError(f"{path}: label PNG must be palette or grayscale, got mode {img.mode}")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UserError(f"{path}: cannot read label PNG ({e})") from e


def read_list(path, id_of=None) -> list[str]:
    """Image ids of a list file: first whitespace token of each non-empty line, extension stripped
    (then mapped by ``id_of``, e.g. COCO's zero-padding, when given).

    A missing, unreadable or empty list, or an id listed twice (it would be trained on or scored
    twice), is a ``UserError`` naming the file, e.g.
    ``val.txt: image id '2007_000032' is listed twice (lines 3 and 17)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the image list ({e})") from e
    line_of: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        tok = line.strip().split()
        if not tok:
            continue
        iid = Path(tok[0]).stem
        iid = id_of(iid) if id_of is not None else iid
        if iid in line_of:
            raise UserError(f"{path}: image id {iid!r} is listed twice (lines {line_of[iid]} and "
                            f"{n}); remove the repeated line")
        line_of[iid] = n
    if not line_of:
        raise UserError(f"{path}: the image list is empty")
    return list(line_of)


def save_cls_labels(path, ids, labels, class_names) -> None:
    """Image-level labels as npz: ``ids`` (N,) str, ``labels`` (N, C) uint8 multi-hot, ``class_names`` (C,)."""
    labels = np.asarray(labels, np.uint8)
    _save_npz(path, ids=np.asarray(ids, dtype=str), labels=labels,
              class_names=np.asarray(class_names, dtype=str))


def load_cls_labels(path) -> dict[str, np.ndarray]:
    """Load image-level labels: dict id -> (C,) float32 multi-hot (foreground only)."""
    ids, labels = _load_npz(path, ("ids", "labels"))
    return {str(i): l.astype(np.float32) for i, l in zip(ids, labels)}
