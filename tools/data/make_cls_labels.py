"""Image-level labels from VOC XML annotations (docs/METHOD.md section 1).

Usage::

    python -m tools.data.make_cls_labels --data_root DIR [--out FILE] [--list L ...] [--dataset voc]

For every image, label[c] = 1 when some ``annotation/object`` has a direct ``name`` child whose
text (stripped) is class name c; part names (``object/part/name``: head, hand, foot) are not
object names and are ignored, difficult objects count, names that are not classes are ignored.
Class names come from ``lib.datasets.classes.get_class_names(dataset, root)``, i.e.
``<root>/classes.txt`` when present, else the 20 VOC classes.

Without ``--list`` every ``Annotations/*.xml`` is read (ids sorted); ``--list`` takes list files
(paths, or split names resolved as ``<root>/ImageSets/Segmentation/<name>.txt``) and reads the
annotations of the union of their ids (first-seen order). The output (default
``<voc_root>/cls_labels.npz``) is written with ``lib.io.save_cls_labels``: ``ids`` (N,),
``labels`` (N, C) uint8 multi-hot, ``class_names`` (C,).
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from lib.datasets.classes import get_class_names
from lib.errors import UserError, run_main
from lib.io import list_artifacts, read_list, save_cls_labels


def object_names(xml_path: str | os.PathLike) -> list[str]:
    """Texts of ``annotation/object/name`` (direct children only) in document order.

    Raises FileNotFoundError when the file is absent and ValueError naming the file when it is
    not well-formed XML.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise FileNotFoundError(f"annotation {xml_path} does not exist")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise UserError(f"{xml_path}: malformed XML ({e})") from e
    names = []
    for obj in root.findall("object"):
        name = obj.find("name")           # direct child only: part/name is not matched
        if name is not None and name.text:
            names.append(name.text.strip())
    return names


def image_labels(xml_path, class_names) -> tuple[np.ndarray, list[str]]:
    """(C,) uint8 multi-hot of the classes named in ``xml_path`` and the ignored (non-class) names."""
    index = {c: i for i, c in enumerate(class_names)}
    lab = np.zeros(len(class_names), np.uint8)
    ignored = []
    for n in object_names(xml_path):
        if n in index:
            lab[index[n]] = 1
        else:
            ignored.append(n)
    return lab, ignored


def resolve_list(root: Path, spec: str) -> Path:
    p = Path(spec)
    if p.is_file():
        return p
    q = root / "ImageSets" / "Segmentation" / f"{spec}.txt"
    if q.is_file():
        return q
    raise FileNotFoundError(f"list {spec!r} is neither a file nor {q}")


def build_cls_labels(voc_root, lists=None, dataset: str = "voc"):
    """Return (ids, labels (N, C) uint8, class_names, ignored-name Counter)."""
    root = Path(voc_root)
    ann = root / "Annotations"
    if not ann.is_dir():
        raise FileNotFoundError(f"{ann} is not a directory")
    class_names = get_class_names(dataset, root)
    if lists:
        ids = list(dict.fromkeys(i for spec in lists for i in read_list(resolve_list(root, spec))))
    else:
        ids = [p.stem for p in list_artifacts(ann, ".xml")]  # macOS ._*.xml files skipped
    if not ids:
        raise UserError(f"no image ids found ({'lists ' + str(lists) if lists else ann})")
    labels = np.zeros((len(ids), len(class_names)), np.uint8)
    ignored: Counter = Counter()
    for k, i in enumerate(ids):
        labels[k], ign = image_labels(ann / f"{i}.xml", class_names)
        ignored.update(ign)
    return ids, labels, class_names, ignored


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Image-level multi-hot labels from VOC XML annotations.")
    ap.add_argument("--data_root", "--voc_root", dest="data_root", required=True, help="folder with Annotations/ (and optional classes.txt)")
    ap.add_argument("--out", default=None, help="output .npz (default <data_root>/cls_labels.npz)")
    ap.add_argument("--list", nargs="+", default=None,
                    help="list files or split names; default: every Annotations/*.xml")
    ap.add_argument("--dataset", default="voc", choices=["voc"])
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.data_root) / "cls_labels.npz"
    ids, labels, names, ignored = build_cls_labels(args.data_root, args.list, args.dataset)
    save_cls_labels(out, ids, labels, names)
    per_class = ", ".join(f"{n} {int(c)}" for n, c in zip(names, labels.sum(0)))
    print(f"wrote {out}: {len(ids)} images, {len(names)} classes ({per_class}); "
          f"{int((labels.sum(1) == 0).sum())} images without a class", file=sys.stderr)
    if ignored:
        print(f"ignored object names (not classes): {dict(ignored)}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main, "make_cls_labels")
