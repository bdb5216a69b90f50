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
* Every reader turns a file it cannot parse into one ``UserError`` naming the file and what it
  is instead (:func:`unreadable`): empty, truncated (an interrupted write or copy), an HTML page,
  another format, damaged.
* A name starting with ``.`` is never an artifact: :func:`atomic_path` writes under such a
  temporary name, which a killed process can leave behind (:func:`list_artifacts` skips them).
"""
from __future__ import annotations

import contextlib
import os
import struct
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


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a hidden name: an :func:`atomic_path` temporary (``.<stem>.<random>.tmp
    <suffix>``, left behind when a writer was killed) or another hidden file (macOS ``._*``)."""
    return Path(path).name.startswith(".")


def list_artifacts(folder: str | os.PathLike, suffix: str) -> list[Path]:
    """The finished artifacts ``<folder>/*<suffix>``, sorted; temporary and hidden files skipped."""
    return sorted(p for p in Path(folder).glob(f"*{suffix}") if not is_temporary(p) and p.is_file())


# ----------------------------------------------------------------------------- unreadable files

# Leading bytes of the formats a reader may meet instead of the one it expects.
_SIGNATURES = (
    (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"), (struct.pack("<Q", 0x112), "mxnet"), (b"\x93NUMPY", "npy"),
    (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"GIF8", "gif"),
    (b"%PDF", "pdf"),
)
_FORMAT_NAMES = {
    "zip": "a zip archive (.npz / torch .pth)", "png": "a PNG image", "jpeg": "a JPEG image",
    "mxnet": "an MXNet .params file", "npy": "a .npy array", "gzip": "a gzip file",
    "bzip2": "a bzip2 file", "xz": "an xz file", "gif": "a GIF image", "pdf": "a PDF document",
    "tar": "a tar archive", "pickle": "a Python pickle (an old-style torch file?)",
}
_ZIP_END = b"PK\x05\x06"       # end-of-central-directory record, within the last 64 KiB + 22 bytes
_PNG_END = b"IEND\xaeB`\x82"   # the IEND chunk's type and CRC end every PNG
_TAIL = 65536 + 22


def sniff_format(head: bytes) -> str | None:
    """The format key (``_FORMAT_NAMES``, or ``'html'`` / ``'text'``) the leading bytes ``head``
    (the first KiB or more) show, or None for unrecognised binary data."""
    for sig, kind in _SIGNATURES:
        if head.startswith(sig):
            return kind
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or \
            (lowered.startswith(b"<") and b"<html" in lowered):
        return "html"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut by the head's end is still text
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 and e.start else None
    if text is not None and text and sum(c.isprintable() or c in "\t\r\n" for c in text) >= 0.95 * len(text):
        return "text"
    return None


def sniff_file(path: str | os.PathLike) -> str | None:
    """:func:`sniff_format` of the first 4 KiB of ``path`` (None also when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(4096))
    except OSError:
        return None


_END_MARKERS = {"zip": "the zip archive's end record", "png": "the PNG end chunk",
                "jpeg": "the JPEG end marker"}


def _complete(kind: str, tail: bytes) -> bool:
    """Whether a file of format ``kind`` has its end marker (False: it was cut short)."""
    if kind == "zip":  # the 22-byte end record (+ its comment) must be there in full
        at = tail.rfind(_ZIP_END)
        return at >= 0 and len(tail) - at >= 22 and \
            len(tail) - at >= 22 + int.from_bytes(tail[at + 20:at + 22], "little")
    if kind == "png":
        return _PNG_END in tail[-16:]
    if kind == "jpeg":
        return tail.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")
    return True


def _short_reason(reason) -> str:
    """The informative line of an exception's (often multi-line) message, at most ~160 chars."""
    text = str(reason) if reason is not None else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # torch's weights_only refusal: the line naming the refused object
        if "Unsupported global" in ln or "Unsupported operand" in ln:
            return ln[:160]
    out = lines[0] if lines else (type(reason).__name__ if isinstance(reason, BaseException) else "")
    return out[:160] + ("..." if len(out) > 160 else "")


def describe_unreadable(path: str | os.PathLike, formats: tuple[str, ...], reason=None) -> str:
    """What is wrong with ``path``, which failed to parse as one of ``formats`` (keys of
    ``_FORMAT_NAMES``): ``empty file (0 bytes)``; ``truncated: ...``; ``the file is an HTML page
    ...``; ``the file is a PNG image``; ``damaged (<reason>)``; ``unrecognised content ...``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as e:
        return f"cannot open it ({e.strerror or e})"
    if size == 0:
        return "empty file (0 bytes)"
    kind = sniff_format(head)
    if kind in formats:
        if not _complete(kind, tail):
            return (f"truncated ({size} bytes, {_END_MARKERS[kind]} is missing: an interrupted "
                    f"write or copy)")
        if reason is not None and "Weights only load failed" in str(reason):
            return f"it holds Python objects that weights_only=True refuses ({_short_reason(reason)})"
        return f"damaged ({_short_reason(reason)})" if reason is not None else "damaged"
    if kind == "html":
        return "the file is an HTML page (a saved web page or a server's error page?)"
    if kind == "text":
        first = head.decode("utf-8", "replace").strip().splitlines()[0][:40]
        return f"the file is text ({first!r}...)"
    if kind is not None:
        return f"the file is {_FORMAT_NAMES[kind]}"
    return f"unrecognised content (first bytes {head[:8].hex(' ')})"


def unreadable(path: str | os.PathLike, what: str, formats: tuple[str, ...], reason=None,
               hint: str = "") -> UserError:
    """``UserError("<path>: cannot read <what>: <describe_unreadable>[; <hint>]")``, e.g.
    ``cam/a.npz: cannot read CAM artifact: truncated (1234 bytes, the zip archive's end record is
    missing: an interrupted write or copy)``. ``reason``: the parser's exception, quoted only for
    a file of the expected format that is damaged in some other way."""
    problem = describe_unreadable(path, formats, reason)
    return UserError(f"{path}: cannot read {what}: {problem}" + (f"; {hint}" if hint else ""))


def _save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_npz(path, names: tuple[str, ...], what: str = ".npz artifact") -> tuple[np.ndarray, ...]:
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
    except Exception as e:  # noqa: BLE001 - BadZipFile, OSError, ValueError, EOFError, zlib.error...
        raise unreadable(path, what, ("zip", "npy"), e) from e


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


def _load_maps(path, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a score-map artifact: (keys (K,) int64, ``<name>`` (K, H, W) float32)."""
    keys, maps = _load_npz(path, ("keys", name), what)
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
    return _load_maps(path, "cams", "CAM artifact")


def save_crf(path, keys, probs) -> None:
    """Save a CRF artifact. ``keys`` (K+1,) with 0 = background, k+1 = class k; ``probs`` (K+1, H, W)."""
    _save_maps(path, keys, probs, "probs")


def load_crf(path) -> tuple[np.ndarray, np.ndarray]:
    """Load a CRF artifact: (keys (K+1,) int64 with 0 = background, probs (K+1, H, W) float32)."""
    return _load_maps(path, "probs", "CRF artifact")


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
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise unreadable(path, "image", ("jpeg", "png", "gif"), e) from e


def load_label_png(path) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 class ids (palette indices, not colours)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise UserError(f"{path}: label PNG must be palette or grayscale, got mode {img.mode}")
            return np.asarray(img, dtype=np.uint8).copy()
    except (FileNotFoundError, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise unreadable(path, "label PNG", ("png",), e) from e


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
    ids, labels = _load_npz(path, ("ids", "labels"), "image-level labels (.npz)")
    return {str(i): l.astype(np.float32) for i, l in zip(ids, labels)}
