"""Evaluate segmentation predictions against VOC-style GT: mIoU and contour F-score (docs/METHOD.md section 7).

    python -m tools.evaluate --pred_dir D --gt_dir G --list L --num_classes N \
        [--type png|cam|crf] [--bg_threshold T] [--bg_sweep] [--eval_workers K] \
        [--out_json F] [--class_names FILE|voc|coco] [--title STR]

Prints a table (percent) to stdout; ``--out_json`` writes {"num_images", "miou", "contour_f",
"per_class_iou", "per_class_contour_f"} (fractions, NaN -> null; plus "bg_sweep" with --bg_sweep).
Errors (missing/mismatched/out-of-range files) exit non-zero with a message naming the file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lib.cli import add_bool
from lib.evaluation.evaluate import (accumulate_counts, default_workers, format_results, format_sweep,
                                     resolve_class_names, save_results_json, summarize)
from lib.errors import UserError, check_args, check_writable_dir, run_main
from lib.io import read_list


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--pred_dir", required=True, help="folder of predictions <id>.png or <id>.npz")
    p.add_argument("--gt_dir", required=True, help="folder of GT label PNGs <id>.png (0..N, 255 void)")
    p.add_argument("--list", required=True, help="image list (first token of each line = id)")
    p.add_argument("--num_classes", type=int, required=True, help="number of foreground classes N")
    p.add_argument("--type", dest="pred_type", choices=("png", "cam", "crf"), default="png",
                   help="prediction kind: label PNGs, CAM npz (stage 1) or CRF npz")
    p.add_argument("--bg_threshold", type=float, default=None,
                   help="CAM only: fixed background score (default: 1 - sum of foreground CAMs)")
    p.add_argument("--bg_sweep", action="store_true",
                   help="CAM only: also report mIoU for background thresholds 0.00..0.59")
    p.add_argument("--eval_workers", "--workers", dest="eval_workers", type=int,
                   default=default_workers(),
                   help="worker processes (default min(4, cpu count))")
    p.add_argument("--out_json", default=None, help="write the results as JSON here")
    p.add_argument("--class_names", default=None,
                   help="classes.txt file or 'voc'/'coco' (default <gt_dir>/../classes.txt, else by N)")
    p.add_argument("--title", default=None, help="title printed above the table")
    add_bool(p, "progress", True, "the progress bar", old="--no_progress")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args, {"num_classes": ">= 1", "eval_workers": ">= 1", "bg_threshold": ">= 0"})
    ids = read_list(args.list)
    names = resolve_class_names(args.class_names, args.gt_dir, args.num_classes)
    if args.out_json:  # before the evaluation runs, not after
        check_writable_dir(Path(args.out_json).parent, "folder of --out_json")
    try:
        counts = accumulate_counts(args.pred_dir, args.gt_dir, ids, args.num_classes, args.pred_type,
                                   args.bg_threshold, args.eval_workers, bg_sweep=args.bg_sweep,
                                   progress=args.progress)
    except ImportError as e:  # an optional dependency of a prediction type
        raise UserError(f"--type {args.pred_type}: {e}") from e
    result = summarize(counts, names)
    title = args.title or f"{args.pred_type} predictions in {args.pred_dir}"
    print(format_results(result, title))
    if "bg_sweep" in result:
        print(format_sweep(result["bg_sweep"]))
    if args.out_json:
        save_results_json(result, args.out_json)
        print(f"results written to {args.out_json}")
    return 0


if __name__ == "__main__":
    run_main(main, "evaluate")
