"""COCO instances JSON -> semantic label PNGs, image list and image-level labels (docs/METHOD.md section 1).

For each split (``train2014``, ``val2014``, ``train2017``, ``val2017``, ...) reads
``<coco_root>/annotations/instances_<split>.json`` and writes

* ``<coco_root>/SegmentationClass/<split>/<12-digit id>.png`` — 8-bit VOC-palette label map:
  category ids sorted ascending (1..90 with gaps for COCO) are mapped to class indices 0..C-1
  (C = 80); label = zeros, then every annotation of the image, in annotation order, paints its
  mask with (index + 1): ``label[mask_a] = cls(a) + 1``, so a later annotation overwrites an
  earlier one where they overlap. Masks are those of ``pycocotools.coco.COCO.annToMask``:
  polygons filled, uncompressed and compressed RLE (crowd annotations included) decoded. No void.
* ``<coco_root>/ImageSets/<split>.txt`` — every image id of the JSON (also those without
  annotations), zero-padded to 12 digits, sorted.
* ``<coco_root>/cls_labels_<split>.npz`` (``lib.io.save_cls_labels``) — ``labels[i, c] = 1`` iff
  some annotation of image i (crowd included) has class c; ``class_names`` = the JSON category
  names in category-id order.

The images themselves are not read; they are expected (by the dataset readers) at
``<coco_root>/<split>/`` as unzipped (``COCO_<split>_<id>.jpg`` for 2014, ``<id>.jpg`` for 2017).

Usage::

    python -m tools.data.process_coco --data_root data/coco --split train2014 val2014 --workers 8
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils

from lib.cli import add_bool
from lib.datasets.classes import get_class_names
from lib.errors import UserError, run_main
from lib.io import atomic_path, save_cls_labels, save_label_png

ID_DIGITS = 12


def format_id(image_id: int) -> str:
    """COCO image id as the 12-digit zero-padded string used in lists and file names."""
    return f"{int(image_id):0{ID_DIGITS}d}"


def ann_to_mask(segmentation, h: int, w: int) -> np.ndarray:
    """Binary (h, w) uint8 mask of one annotation, as ``COCO.annToMask`` computes it.

    * list of polygons ``[[x0, y0, x1, y1, ...], ...]`` -> rasterised and merged (union);
    * uncompressed RLE ``{"counts": [int, ...], "size": [h, w]}`` (crowd) -> converted, decoded;
    * compressed RLE ``{"counts": str, "size": [h, w]}`` -> decoded as is.

    An empty polygon list (on which ``annToMask`` raises IndexError) gives an empty mask.
    """
    if isinstance(segmentation, list):
        if len(segmentation) == 0:
            return np.zeros((h, w), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    m = mask_utils.decode(rle)
    if m.shape != (h, w):
        raise ValueError(f"mask shape {m.shape} does not match image size {(h, w)}")
    return m


def paint_label(h: int, w: int, anns) -> np.ndarray:
    """(h, w) uint8 label: zeros, then ``label[mask] = cls + 1`` for each (cls, segmentation) in order."""
    label = np.zeros((h, w), np.uint8)
    for cls, segmentation in anns:
        label[ann_to_mask(segmentation, h, w).astype(bool)] = cls + 1
    return label


class CocoSplit:
    """Parsed instances JSON: categories, images (sorted by id) and per-image annotations.

    ``cat_ids`` sorted category ids, ``class_names`` their names, ``cat_index`` id -> 0..C-1;
    ``images`` list of (image id, height, width) sorted by id; ``anns[image id]`` list of
    (class index, segmentation) in annotation order (the painting order).
    """

    def __init__(self, ann_file):
        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} does not exist")
        try:
            with open(ann_file) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{ann_file}: not valid JSON ({e})") from e
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise UserError(f"{ann_file}: missing list '{key}' (not an instances_*.json file?)")
        try:
            cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
            images = sorted((int(im["id"]), int(im["height"]), int(im["width"])) for im in data["images"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{ann_file}: malformed category or image entry ({e!r})") from e
        if not cats:
            raise UserError(f"{ann_file}: no categories")
        if len(cats) > 254:
            raise UserError(f"{ann_file}: {len(cats)} categories do not fit an 8-bit label map")
        if len({c for c, _ in cats}) != len(cats):
            raise UserError(f"{ann_file}: duplicate category ids")
        if len({i for i, _, _ in images}) != len(images):
            raise UserError(f"{ann_file}: duplicate image ids")
        self.ann_file = ann_file
        self.cat_ids = [c for c, _ in cats]
        self.class_names = [n for _, n in cats]
        self.cat_index = {c: k for k, c in enumerate(self.cat_ids)}
        self.images = images
        self.anns: dict[int, list] = {i: [] for i, _, _ in images}
        for a in data["annotations"]:
            try:
                image_id, cat_id, segm = int(a["image_id"]), int(a["category_id"]), a["segmentation"]
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"{ann_file}: malformed annotation {a.get('id', '?')} ({e!r})") from e
            if image_id not in self.anns:
                raise UserError(f"{ann_file}: annotation {a.get('id', '?')} refers to unknown image {image_id}")
            if cat_id not in self.cat_index:
                raise UserError(f"{ann_file}: annotation {a.get('id', '?')} has unknown category {cat_id}")
            self.anns[image_id].append((self.cat_index[cat_id], segm))

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def ids(self) -> list[str]:
        return [format_id(i) for i, _, _ in self.images]

    def cls_labels(self) -> np.ndarray:
        """(N, C) uint8 multi-hot of the classes annotated in each image (crowd included)."""
        labels = np.zeros((len(self.images), self.num_classes), np.uint8)
        for row, (image_id, _, _) in enumerate(self.images):
            cls = [k for k, _ in self.anns[image_id]]
            labels[row, cls] = 1
        return labels


def sync_class_file(coco_root, class_names, ann_file) -> None:
    """Keep ``<coco_root>/classes.txt`` consistent with a JSON whose categories are not COCO's 80.

    The readers take class names from ``classes.txt`` when it exists, else ``COCO_CLASSES``
    (``lib.datasets.classes.get_class_names``); a custom instances file therefore gets its names
    written there, and a ``classes.txt`` that disagrees with the JSON is an error.
    """
    path = Path(coco_root) / "classes.txt"
    current = list(get_class_names("coco", coco_root))  # classes.txt if present, else COCO_CLASSES
    if current == list(class_names):
        return
    if path.is_file():
        raise UserError(f"{ann_file}: categories {list(class_names)[:5]}... (C={len(class_names)}) "
                         f"differ from {path} ({current[:5]}..., C={len(current)})")
    print(f"note: the {len(class_names)} category names of {ann_file} are not the 80 COCO class "
          f"names; writing them to {path}", file=sys.stderr)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{n}\n" for n in class_names))


def _write_png(task) -> str:
    out, h, w, anns, image_id = task
    try:
        save_label_png(out, paint_label(h, w, anns))
    except Exception as e:  # re-raised in the parent with the image named
        raise UserError(f"image {image_id}: {e}") from e
    return out


def process_split(coco_root, split: str, workers: int = 1, overwrite: bool = False,
                  ann_file=None, progress: bool = True) -> dict:
    """Write label PNGs, list and cls labels of one split; returns counts for the summary line."""
    coco_root = Path(coco_root)
    ann_file = Path(ann_file) if ann_file else coco_root / "annotations" / f"instances_{split}.json"
    coco = CocoSplit(ann_file)
    sync_class_file(coco_root, coco.class_names, ann_file)
    if not (coco_root / split).is_dir():
        print(f"warning: image folder {coco_root / split} not found (labels are written anyway)",
              file=sys.stderr)

    ids = coco.ids()
    list_path = coco_root / "ImageSets" / f"{split}.txt"
    with atomic_path(list_path) as tmp:
        Path(tmp).write_text("".join(f"{i}\n" for i in ids))
    save_cls_labels(coco_root / f"cls_labels_{split}.npz", ids, coco.cls_labels(), coco.class_names)

    png_dir = coco_root / "SegmentationClass" / split
    png_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for sid, (image_id, h, w) in zip(ids, coco.images):
        out = png_dir / f"{sid}.png"
        if overwrite or not out.exists():
            tasks.append((str(out), h, w, coco.anns[image_id], image_id))
    skipped = len(ids) - len(tasks)

    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc=split, unit="img", disable=not progress or None)
    try:
        if workers <= 1 or len(tasks) < 2:
            for t in tasks:
                _write_png(t)
                bar.update()
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_png, tasks, chunksize=max(1, min(64, len(tasks) // (4 * workers)))):
                    bar.update()
    finally:
        bar.close()
    return {"split": split, "images": len(ids), "written": len(tasks), "skipped": skipped,
            "classes": coco.num_classes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", "--coco_root", dest="data_root", required=True,
                   help="COCO folder holding annotations/ and the image folders")
    p.add_argument("--split", "--splits", dest="splits", nargs="+", action="extend", required=True,
                   help="one or more splits, e.g. train2014 val2014")
    p.add_argument("--ann_file", default=None,
                   help="instances JSON (only with a single split; default <data_root>/annotations/instances_<split>.json)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--overwrite", action="store_true", help="rewrite label PNGs that already exist")
    add_bool(p, "progress", True, "the progress bar", old="--no_progress")
    args = p.parse_args(argv)
    if args.ann_file and len(args.splits) != 1:
        raise UserError("--ann_file: needs exactly one --split")
    for split in args.splits:
        s = process_split(args.data_root, split, args.workers, args.overwrite, args.ann_file,
                          progress=args.progress)
        print(f"{s['split']}: {s['images']} images, {s['classes']} classes; "
              f"{s['written']} label PNGs written, {s['skipped']} existing kept")
    return 0


if __name__ == "__main__":
    run_main(main, "process_coco")
