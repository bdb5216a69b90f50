"""Where a dataset keeps its images, ground truth, lists and image-level labels.

VOC layout (VOC 2012 + SBD; also the synthetic set), ``root`` = the ``VOC2012`` folder::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        ground truth (falls back to SegmentationClassAug/<id>.png)
    ImageSets/Segmentation/<split>.txt
    cls_labels.npz                    image-level labels (tools/data/make_cls_labels.py)
    classes.txt                       optional class-name override (lib.datasets.classes)

COCO layout (written by the COCO data-prep tool), ``split`` like train2014 / val2017::

    <split>/COCO_<split>_<12-digit id>.jpg   (2014 zips)  or  <split>/<12-digit id>.jpg  (2017)
    SegmentationClass/<split>/<id>.png
    ImageSets/<split>.txt                    12-digit ids
    cls_labels_<split>.npz
"""
from __future__ import annotations

import os
from pathlib import Path

from lib.errors import UserError
from lib.io import read_list

from .classes import get_class_names


class Layout:
    """Paths of one split of one dataset. Subclasses define the file naming."""

    dataset = ""

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.dataset} root {self.root} is not a directory")
        self.class_names: tuple[str, ...] = get_class_names(self.dataset, self.root)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes C (background not counted)."""
        return len(self.class_names)

    def ids(self) -> list[str]:
        """Image ids of the split, in list-file order."""
        return read_list(self.list_path())

    def image_path(self, image_id: str) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def gt_path(self, image_id: str) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def list_path(self) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def cls_labels_path(self) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, C={self.num_classes})"


class VOCLayout(Layout):
    dataset = "voc"

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def gt_path(self, image_id: str) -> Path:
        """``SegmentationClass/<id>.png``, else ``SegmentationClassAug/<id>.png`` when only that exists."""
        primary = self.root / "SegmentationClass" / f"{image_id}.png"
        if primary.is_file():
            return primary
        aug = self.root / "SegmentationClassAug" / f"{image_id}.png"
        return aug if aug.is_file() else primary

    def list_path(self) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"

    def cls_labels_path(self) -> Path:
        return self.root / "cls_labels.npz"


class SyntheticLayout(VOCLayout):
    """The synthetic set is a VOC-layout root whose default class list is SYNTHETIC_CLASSES."""

    dataset = "synthetic"


def coco_id(image_id: str) -> str:
    """Zero-pad a numeric COCO id to 12 digits (ids that are not numeric are returned unchanged)."""
    return image_id.zfill(12) if image_id.isdigit() else image_id


class COCOLayout(Layout):
    dataset = "coco"

    def ids(self) -> list[str]:
        return read_list(self.list_path(), coco_id)

    def image_path(self, image_id: str) -> Path:
        """``<split>/COCO_<split>_<id>.jpg`` (2014) or ``<split>/<id>.jpg`` (2017), whichever exists.

        When neither exists the name of the split's release convention is returned (2014 style for
        a split containing '2014'), so a later open names a plausible path.
        """
        image_id = coco_id(image_id)
        folder = self.root / self.split
        named = folder / f"COCO_{self.split}_{image_id}.jpg"
        plain = folder / f"{image_id}.jpg"
        first, second = (named, plain) if "2014" in self.split else (plain, named)
        if first.is_file():
            return first
        if second.is_file():
            return second
        return first

    def gt_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / self.split / f"{coco_id(image_id)}.png"

    def list_path(self) -> Path:
        return self.root / "ImageSets" / f"{self.split}.txt"

    def cls_labels_path(self) -> Path:
        return self.root / f"cls_labels_{self.split}.npz"


_LAYOUTS = {"voc": VOCLayout, "synthetic": SyntheticLayout, "coco": COCOLayout}


def get_layout(dataset: str, root: str | os.PathLike, split: str) -> Layout:
    """Layout of ``split`` of ``dataset`` ('voc', 'coco'; 'synthetic' = VOC layout) under ``root``."""
    if dataset not in _LAYOUTS:
        raise UserError(f"unknown dataset {dataset!r}; expected one of {sorted(_LAYOUTS)}")
    if not split or "/" in split or "\\" in split:
        raise UserError(f"invalid split name {split!r}")
    return _LAYOUTS[dataset](root, split)


def resolve_list(dataset: str, root, split_or_file: str) -> tuple[Layout, list[str]]:
    """A ``--train_list`` / ``--infer_list`` value: a split name of the layout, or a list file.

    A value naming an existing file (or containing a path separator / ending in .txt) is read
    with ``lib.io.read_list``; its stem is used as the layout's split (COCO image folders are
    per split, e.g. ``train2014.txt``). Returns (layout, ids).
    """
    p = Path(split_or_file)
    if p.is_file() or "/" in split_or_file or os.sep in split_or_file or p.suffix == ".txt":
        # FileNotFoundError naming the file when it is absent; repeated ids refused
        ids = read_list(p, coco_id if dataset == "coco" else None)
        return get_layout(dataset, root, p.stem), ids
    layout = get_layout(dataset, root, split_or_file)
    if not layout.list_path().is_file():
        raise FileNotFoundError(f"split {split_or_file!r}: list file {layout.list_path()} does not exist")
    return layout, layout.ids()


def check_files_exist(paths, what: str) -> None:
    """Fail before any training or inference when files of an image list are missing.

    ``paths``: the expected files (one per image id); ``what``: their kind ("image", "pseudo
    label", ...). Raises ``UserError("<first missing>: <what> does not exist (N of M missing,
    also: ...)")``; a stat per file, so cheap even for COCO's 80k images.
    """
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f"; also {', '.join(str(p) for p in missing[1:3])}" if len(missing) > 1 else ""
        more += ", ..." if len(missing) > 3 else ""
        raise UserError(f"{missing[0]}: {what} does not exist ({len(missing)} of {len(paths)} "
                        f"listed {what}s missing{more})")
