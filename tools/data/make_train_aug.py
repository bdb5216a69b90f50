"""Build VOC ``ImageSets/Segmentation/train_aug.txt`` from the downloaded data itself.

train_aug = { stem of every ``SegmentationClassAug/*.png`` } \\ { ids of ``val.txt`` }, sorted.
With the full VOC 2012 trainval + SBD ``SegmentationClassAug`` (12,031 PNGs, val 1,449) this gives
the 10,582 ids of docs/METHOD.md section 1; the list is derived rather than shipped so that a partial or
mirrored download can never silently disagree with its own labels.

Usage::

    python -m tools.data.make_train_aug --data_root data/VOCdevkit/VOC2012 [--expect 10582]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import add_bool
from lib.errors import UserError, run_main
from lib.io import atomic_path, read_list

FULL_TRAIN_AUG = 10582


def make_train_aug(voc_root, aug_dir=None, val_list=None, check_images: bool = True) -> list[str]:
    """Sorted train_aug ids: PNG stems of ``aug_dir`` minus the ids of ``val_list``.

    Defaults: ``aug_dir = <voc_root>/SegmentationClassAug``,
    ``val_list = <voc_root>/ImageSets/Segmentation/val.txt``. Hidden files (macOS ``._*``
    resource forks that some zips carry) are ignored. With ``check_images`` every id must have
    ``<voc_root>/JPEGImages/<id>.jpg`` (a label without its image is a broken download).
    """
    voc_root = Path(voc_root)
    aug_dir = Path(aug_dir) if aug_dir is not None else voc_root / "SegmentationClassAug"
    val_list = Path(val_list) if val_list is not None else voc_root / "ImageSets/Segmentation/val.txt"
    if not aug_dir.is_dir():
        raise FileNotFoundError(f"augmented label folder {aug_dir} does not exist")
    aug_ids = {p.stem for p in aug_dir.glob("*.png") if not p.name.startswith(".")}
    if not aug_ids:
        raise UserError(f"{aug_dir}: contains no .png label")
    val_ids = set(read_list(val_list))
    if not val_ids:
        raise UserError(f"{val_list}: empty val list")
    ids = sorted(aug_ids - val_ids)
    if not ids:
        raise UserError(f"{aug_dir}: every label id is in {val_list}; train_aug would be empty")
    if check_images:
        missing = [i for i in ids if not (voc_root / "JPEGImages" / f"{i}.jpg").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} train_aug ids of {aug_dir} have no image in {voc_root / 'JPEGImages'} "
                f"(first: {missing[:5]})")
    return ids


def write_list(path, ids) -> None:
    """Write one id per line, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{i}\n" for i in ids))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", "--voc_root", dest="data_root", required=True,
                   help="VOCdevkit/VOC2012 folder")
    p.add_argument("--aug_dir", default=None, help="default <data_root>/SegmentationClassAug")
    p.add_argument("--val_list", default=None, help="default <data_root>/ImageSets/Segmentation/val.txt")
    p.add_argument("--out", default=None, help="default <data_root>/ImageSets/Segmentation/train_aug.txt")
    p.add_argument("--expect", type=int, default=None,
                   help=f"fail unless exactly this many ids result (full VOC + SBD: {FULL_TRAIN_AUG})")
    add_bool(p, "check_images", True, "require JPEGImages/<id>.jpg of every id",
             old="--no_check_images")
    args = p.parse_args(argv)
    ids = make_train_aug(args.data_root, args.aug_dir, args.val_list, args.check_images)
    if args.expect is not None and len(ids) != args.expect:
        raise UserError(f"{args.data_root}: {len(ids)} train_aug ids, expected {args.expect} (--expect)")
    out = Path(args.out) if args.out else Path(args.data_root) / "ImageSets/Segmentation/train_aug.txt"
    write_list(out, ids)
    note = "" if len(ids) == FULL_TRAIN_AUG else f" (the full VOC 2012 + SBD gives {FULL_TRAIN_AUG})"
    print(f"wrote {out}: {len(ids)} ids{note}")
    return 0


if __name__ == "__main__":
    run_main(main, "make_train_aug")
