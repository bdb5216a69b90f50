"""Label overlays and tile layouts of uint8 RGB images (TensorBoard panels of train_seg, the
figures of ``tools.visualize``).

Images are (H, W, 3) uint8, label maps (H, W) class ids (0 background, 255 void); the colours
are the VOC palette of the label PNGs (``lib.io.voc_palette``).
"""
from __future__ import annotations

import numpy as np

from lib.io import voc_palette

_PALETTE = voc_palette()


def colorize_label(label: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 VOC-palette colours (255 void = the palette's cream)."""
    return _PALETTE[np.asarray(label, np.uint8)]


def label_boundaries(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has a different label."""
    label = np.asarray(label)
    b = np.zeros(label.shape, bool)
    b[:, :-1] |= label[:, 1:] != label[:, :-1]
    b[:-1, :] |= label[1:, :] != label[:-1, :]
    return b


def overlay_label(image: np.ndarray, label: np.ndarray, alpha: float = 0.5,
                  contours: bool = True) -> np.ndarray:
    """Blend palette colours into the image where label != 0: out = (1-a) img + a colour.

    image (H, W, 3) uint8, label (H, W) ids -> (H, W, 3) uint8; class boundaries in white.
    """
    image = np.asarray(image, np.uint8)
    label = np.asarray(label, np.uint8)
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} differs from image {image.shape[:2]}")
    out = image.astype(np.float32)
    fg = label != 0
    out[fg] = (1.0 - alpha) * out[fg] + alpha * colorize_label(label)[fg].astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if contours:
        out[label_boundaries(label)] = 255
    return out


def hstack_pad(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Tiles side by side (same height expected; shorter ones padded at the bottom)."""
    h = max(t.shape[0] for t in tiles)
    parts = []
    for i, t in enumerate(tiles):
        if t.shape[0] < h:
            t = np.concatenate([t, np.zeros((h - t.shape[0],) + t.shape[1:], np.uint8)], 0)
        parts.append(t)
        if i + 1 < len(tiles):
            parts.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(parts, 1)


def vstack_pad(rows: list[np.ndarray], gap: int = 4) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    parts = []
    for i, r in enumerate(rows):
        if r.shape[1] < w:
            r = np.concatenate([r, np.full((r.shape[0], w - r.shape[1], 3), 255, np.uint8)], 1)
        parts.append(r)
        if i + 1 < len(rows):
            parts.append(np.full((gap, w, 3), 255, np.uint8))
    return np.concatenate(parts, 0)
