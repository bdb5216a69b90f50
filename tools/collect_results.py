"""Gather the pipeline's evaluation JSONs into ``$EXPDIR/results.json`` and print the table.

results.json: {"cam": {"miou", "contour_f", "train": {...}}, "crf": ..., "rw": ..., "final": ...,
"wall_time_s": {"stage1", "stage2", "stage3", "total"}}; metric values are fractions in [0, 1]
on the val split (the train-split figures sit under "train"), null where a step did not run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.errors import UserError, run_main
from lib.io import atomic_path

ROWS = [("cam", "CAM (stage 1)"), ("crf", "CRF alpha 4 (stage 1)"),
        ("rw", "random walk (stage 2)"), ("final", "DeepLab-v1 (stage 3)")]


def collect(expdir: Path, val_split: str = "val", train_split: str = "train") -> dict:
    def metrics(name: str) -> dict | None:
        f = expdir / "eval" / f"{name}.json"
        if not f.is_file():
            return None
        try:
            d = json.loads(f.read_text())
            return {"miou": d["miou"], "contour_f": d["contour_f"], "num_images": d["num_images"]}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{f}: not an evaluation result ({type(e).__name__}: {e})") from e

    out: dict = {}
    for key, _ in ROWS:
        val = metrics(f"{key}_{val_split}") or {"miou": None, "contour_f": None}
        out[key] = {**val, "train": metrics(f"{key}_{train_split}")}
    times: dict[str, float] = {}
    for f in sorted((expdir / ".timing").glob("*.*")):
        stage = f"stage{f.name.split('.', 1)[0]}"
        times[stage] = times.get(stage, 0.0) + float(f.read_text().strip() or 0)
    times["total"] = sum(times.values())
    out["wall_time_s"] = times
    return out


def format_table(res: dict) -> str:
    def pct(v):
        return "   -  " if v is None else f"{100 * v:6.2f}"

    lines = [f"{'artifact':<24} {'val mIoU':>9} {'val F':>8} {'train mIoU':>11} {'train F':>8}",
             "-" * 64]
    for key, title in ROWS:
        r = res[key]
        t = r.get("train") or {}
        lines.append(f"{title:<24} {pct(r['miou']):>9} {pct(r['contour_f']):>8} "
                     f"{pct(t.get('miou')):>11} {pct(t.get('contour_f')):>8}")
    lines.append("-" * 64)
    lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["wall_time_s"].items()))
    return "\n".join(lines)


def per_class_table(expdir: Path, split: str = "val") -> str | None:
    """Per-class IoU (%) of every evaluated artifact on ``split``: a row per class, a column per
    stage (CAM, CRF, RW, final), so a class that one stage lost stands out. None when nothing
    was evaluated. Classes come in the order of the first evaluation file."""
    ious = {}
    for key, _ in ROWS:
        f = expdir / "eval" / f"{key}_{split}.json"
        if f.is_file():
            ious[key] = json.loads(f.read_text())["per_class_iou"]
    if not ious:
        return None
    classes = list(next(iter(ious.values())))
    lines = [f"per-class IoU on {split} (%)",
             f"{'class':<16}" + "".join(f"{key:>8}" for key in ious), "-" * (16 + 8 * len(ious))]
    for name in classes:
        cells = [ious[key].get(name) for key in ious]
        lines.append(f"{name:<16}" + "".join("       -" if v is None else f"{100 * v:8.2f}"
                                             for v in cells))
    return "\n".join(lines)


def target_note(res: dict, target: float | None) -> str | None:
    """A note when the final val mIoU is below ``target`` (a fraction); None when it is not, or
    when stage 3 has not been evaluated."""
    miou = res["final"]["miou"]
    if target is None or miou is None or miou >= target:
        return None
    return (f"note: the final val mIoU, {100 * miou:.2f} %, is below the target of "
            f"{100 * target:.2f} % (TARGET_MIOU); the README's Troubleshooting says what to try.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--expdir", required=True)
    p.add_argument("--val_split", default="val")
    p.add_argument("--train_split", default="train")
    p.add_argument("--target_miou", type=float, default=None,
                   help="print a note when the final val mIoU (a fraction) is below this, "
                        "with the per-class IoU table that shows which class was lost")
    p.add_argument("--per_class", action="store_true",
                   help="also print the per-class IoU of every stage on the val split")
    args = p.parse_args(argv)
    expdir = Path(args.expdir)
    if not expdir.is_dir():
        raise UserError(f"{expdir}: --expdir is not a directory")
    res = collect(expdir, args.val_split, args.train_split)
    with atomic_path(expdir / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(res, indent=2))
    print("\nICAM results (mIoU and contour F-score in %)")
    print(format_table(res))
    print(f"written {expdir / 'results.json'}")
    note = target_note(res, args.target_miou)
    if args.per_class or note:
        table = per_class_table(expdir, args.val_split)
        if table:
            print("\n" + table)
    if note:
        print(note)


if __name__ == "__main__":
    run_main(main, "collect_results")
