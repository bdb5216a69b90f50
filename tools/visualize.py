"""Side-by-side panels of an image, its CAM heat-map and any number of label maps.

    python -m tools.visualize --image_dir data/VOCdevkit/VOC2012/JPEGImages \\
        --cam_dir EXP/plabels/val/cam \\
        --label_dirs EXP/plabels/val/rw EXP/results/val data/VOCdevkit/VOC2012/SegmentationClass \\
        --names rw final gt --list data/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt \\
        --max_images 20 --out EXP/vis --grid

One PNG per image, ``<out>/<id>.png``: [image | CAM | label dir 1 | label dir 2 | ...], each
tile titled. CAM tile: max over the stored classes of the CAM artifact (``lib.io.load_cam``),
coloured with the JET colormap and blended with the image. Label tiles: the VOC palette colour
of each class blended with the image (alpha 0.5; background pixels keep the image) and the
class boundaries drawn in white. Ground truth is just another label dir. ``--grid`` also writes
``<out>/grid.png`` with the panels of the first ``--grid_max`` images stacked vertically.
All outputs are written atomically.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lib.cli import add_bool
from lib.errors import UserError, check_args, check_writable_dir, run_main
from lib.io import atomic_path, list_artifacts, load_cam, load_image, load_label_png, read_list
from lib.overlay import hstack_pad, overlay_label, vstack_pad

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
TITLE_H = 22


def cam_heatmap(image: np.ndarray, cams: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """JET heat-map of max_k cams[k] (cams (K, h, w) in [0, 1]) blended with the image.

    K = 0 (no class) gives a zero map. The map is resized (bilinear) to the image when needed.
    """
    import cv2

    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    heat = cams.max(0) if cams.shape[0] else np.zeros(cams.shape[1:] or (h, w), np.float32)
    heat = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def titled(tile: np.ndarray, title: str) -> np.ndarray:
    """Tile with a black title strip of TITLE_H pixels on top."""
    import cv2

    strip = np.zeros((TITLE_H, tile.shape[1], 3), np.uint8)
    cv2.putText(strip, title[:40], (4, TITLE_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, tile], 0)


def placeholder(h: int, w: int) -> np.ndarray:
    import cv2

    tile = np.full((h, w, 3), 96, np.uint8)
    cv2.putText(tile, "missing", (4, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    return tile


def find_image(image_dir: Path, image_id: str) -> Path:
    for ext in IMAGE_EXTS:
        p = image_dir / f"{image_id}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image for id {image_id!r} in {image_dir} (tried {', '.join(IMAGE_EXTS)})")


def resize_to_height(tile: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    import cv2

    if not height or tile.shape[0] == height:
        return tile
    w = max(1, round(tile.shape[1] * height / tile.shape[0]))
    return cv2.resize(tile, (w, height), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def make_panel(image_id: str, image_dir: Path, label_dirs: list[Path], names: list[str],
               cam_dir: Path | None = None, alpha: float = 0.5, contours: bool = True,
               allow_missing: bool = False, height: int = 0) -> np.ndarray:
    """The panel of one image: (H', W', 3) uint8 with titled tiles side by side."""
    image = load_image(find_image(image_dir, image_id))  # a truncated file is named
    h, w = image.shape[:2]
    tiles = [titled(resize_to_height(image, height, False), "image")]
    if cam_dir is not None:
        path = cam_dir / f"{image_id}.npz"
        if path.is_file():
            _, cams = load_cam(path)
            tile = cam_heatmap(image, cams, alpha)
        elif allow_missing:
            tile = placeholder(h, w)
        else:
            raise FileNotFoundError(f"CAM file {path} does not exist (use --allow_missing)")
        tiles.append(titled(resize_to_height(tile, height, False), "cam"))
    for d, name in zip(label_dirs, names):
        path = d / f"{image_id}.png"
        if path.is_file():
            label = load_label_png(path)
            if label.shape != (h, w):
                raise UserError(f"{path}: label size {label.shape} differs from the image {(h, w)}")
            tile = overlay_label(image, label, alpha, contours)
        elif allow_missing:
            tile = placeholder(h, w)
        else:
            raise FileNotFoundError(f"label file {path} does not exist (use --allow_missing)")
        tiles.append(titled(resize_to_height(tile, height, False), name))
    return hstack_pad(tiles)


def save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_dir", required=True, help="folder of <id>.jpg / <id>.png images")
    p.add_argument("--label_dirs", nargs="*", default=[], help="folders of <id>.png label maps")
    p.add_argument("--names", nargs="*", default=None, help="tile titles of the label dirs")
    p.add_argument("--cam_dir", default=None, help="folder of <id>.npz CAM artifacts")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--list", default=None, help="image list file (first token per line)")
    g.add_argument("--ids", nargs="+", default=None, help="image ids")
    p.add_argument("--max_images", type=int, default=0, help="only the first N ids (0: all)")
    p.add_argument("--out", required=True, help="output folder (<id>.png per image)")
    p.add_argument("--grid", action="store_true", help="also write <out>/grid.png")
    p.add_argument("--grid_max", type=int, default=16, help="images in the grid")
    p.add_argument("--height", type=int, default=0, help="resize tiles to this height (0: keep)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    add_bool(p, "contours", True, "draw the class boundaries", old="--no_contours")
    p.add_argument("--allow_missing", action="store_true",
                   help="draw a grey tile for a missing label/CAM file instead of failing")
    args = p.parse_args(argv)
    check_args(args, {"max_images": ">= 0", "grid_max": ">= 1", "height": ">= 0",
                      "alpha": "[0, 1]"})
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    image_dir = Path(args.image_dir)
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: --image_dir is not a directory")
    label_dirs = [Path(d) for d in args.label_dirs]
    for d in label_dirs + ([Path(args.cam_dir)] if args.cam_dir else []):
        if not d.is_dir():
            raise UserError(f"{d}: not a directory")
    names = args.names if args.names else [d.name for d in label_dirs]
    if len(names) != len(label_dirs):
        raise UserError(f"--names: {len(names)} entries for {len(label_dirs)} --label_dirs")
    if args.ids:
        ids = list(args.ids)
    elif args.list:
        ids = read_list(args.list)
    else:
        src = label_dirs[0] if label_dirs else (Path(args.cam_dir) if args.cam_dir else None)
        if src is None:
            raise UserError("give --ids, --list, or at least one --label_dirs / --cam_dir")
        ids = sorted({p.stem for ext in (".png", ".npz") for p in list_artifacts(src, ext)})
    if args.max_images:
        ids = ids[:args.max_images]
    if not ids:
        raise UserError("no image ids to visualise")
    out = check_writable_dir(args.out)
    rows = []
    for image_id in ids:
        panel = make_panel(image_id, image_dir, label_dirs, names,
                           Path(args.cam_dir) if args.cam_dir else None, args.alpha,
                           args.contours, args.allow_missing, args.height)
        save_png(out / f"{image_id}.png", panel)
        if args.grid and len(rows) < args.grid_max:
            rows.append(panel)
    if rows:
        save_png(out / "grid.png", vstack_pad(rows))
    print(f"visualize: wrote {len(ids)} panels to {out}" + (" and grid.png" if rows else ""),
          file=sys.stderr)


if __name__ == "__main__":
    run_main(main, "visualize")
