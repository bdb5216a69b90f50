"""Foreground class names of each dataset (background is implicit: label id 0, class k -> id k+1).

``get_class_names(dataset, root)`` reads ``<root>/classes.txt`` (one name per line, blank lines
ignored) when it exists, so a VOC-layout root such as the synthetic set declares its own classes;
otherwise it returns the dataset's built-in list.
"""
from __future__ import annotations

import os
from pathlib import Path

from lib.errors import UserError

# docs/METHOD.md section 1 order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# The 80 COCO categories in ascending category-id order (ids 1..90 with gaps -> indices 0..79).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# The synthetic VOC-layout set of tools/data/make_synthetic_voc.py (shape + texture per class).
SYNTHETIC_CLASSES: tuple[str, ...] = ("disc", "box", "triangle", "star", "ring")

_BUILTIN = {"voc": VOC_CLASSES, "coco": COCO_CLASSES, "synthetic": SYNTHETIC_CLASSES}


def read_class_file(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names from a ``classes.txt`` file: one per line, surrounding spaces and blank lines dropped."""
    path = Path(path)
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise UserError(f"{path}: class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{path}: duplicate class names {dup}")
    return names


def get_class_names(dataset: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Foreground class names of ``dataset`` ('voc', 'coco' or 'synthetic').

    ``<root>/classes.txt`` overrides the built-in list when ``root`` is given and the file exists.
    """
    if dataset not in _BUILTIN:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_BUILTIN)}")
    if root is not None:
        f = Path(root) / "classes.txt"
        if f.is_file():
            return read_class_file(f)
    return _BUILTIN[dataset]
