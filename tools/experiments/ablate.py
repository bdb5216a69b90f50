"""The demo ablation of ICAM's two contributions: stage-1 variants x training seeds, one table.

Every run is ``run_all_demo.sh`` in the paper regime (the shipped synthetic-pretrained trunk, all
three stages, stage 3 on the random-walk labels) with only stage 1's loss changed:

    gap   GAP baseline              --loss_weight 0   --rv_pooling avg --no-fsl
    is    importance sampling only  --loss_weight 0.8 --no-fsl
    fsl   FSL only                  --loss_weight 0   --fsl
    icam  ICAM (the default)        --loss_weight 0.8 --fsl
    hfpl  the HFPL sampling variant --loss_weight 0.8 --fsl --sampling hfpl

(w = ``--loss_weight``: the stage-1 image-level prediction is (1 - w) GAP + w importance sampling,
docs/METHOD.md section 2.) Each run goes to ``<out>/<variant>/seed<s>`` and all share one synthetic
dataset, ``<out>/data/synthetic``; a finished run is skipped (the runner's step markers), so an
interrupted ablation resumes where it stopped. At the end ``<out>/ablation.json`` and
``<out>/ablation.md`` hold the table: val mIoU / contour F (%) of the CAMs, the alpha-4 CRF maps, the
random walk and the final network, mean +- sample standard deviation over the seeds, and the
per-class val IoU of each, mean over the seeds (which class a difference comes from).

    python -m tools.experiments.ablate --out ablation --seeds 0 1 2          # about 15 runs of the demo
    python -m tools.experiments.ablate --out ablation --table_only           # the table of what has finished

Other ``DEMO_*`` environment variables pass through to every run (e.g. ``DEMO_CAM_STEPS``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lib.errors import RunError, UserError, run_main
from lib.io import atomic_path
from tools.collect_results import ROWS

REPO = Path(__file__).resolve().parents[2]

VARIANTS = {
    "gap": ("GAP baseline", "--loss_weight 0 --rv_pooling avg --no-fsl"),
    "is": ("importance sampling only", "--loss_weight 0.8 --no-fsl"),
    "fsl": ("FSL only", "--loss_weight 0 --fsl"),
    "icam": ("ICAM (IS + FSL, default)", "--loss_weight 0.8 --fsl"),
    "hfpl": ("HFPL sampling + FSL", "--loss_weight 0.8 --fsl --sampling hfpl"),
}


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / variant / f"seed{seed}"


def run_one(out: Path, variant: str, seed: int, python: str) -> float:
    """One demo run; returns its wall time in seconds (0 when it had finished before)."""
    expdir = run_dir(out, variant, seed)
    if (expdir / "results.json").is_file() and (expdir / "eval" / "final_val.json").is_file():
        return 0.0
    expdir.mkdir(parents=True, exist_ok=True)
    extra = os.environ.get("DEMO_CAM_TRAIN_ARGS", "")
    env = {**os.environ, "DEMO_REGIME": "paper", "DEMO_SEED": str(seed), "EXPDIR": str(expdir),
           "DATA_ROOT": str(out / "data" / "synthetic"), "PYTHON": python,
           "DEMO_CAM_TRAIN_ARGS": f"{VARIANTS[variant][1]} {extra}".strip()}
    log = out / f"{variant}_seed{seed}.log"
    print(f"[ablate] {variant} seed {seed} -> {expdir} (log: {log})", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.call(["bash", str(REPO / "run_all_demo.sh")], cwd=REPO, env=env,
                             stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RunError(f"{log}: the {variant} run with seed {seed} failed (exit {rc}); "
                       "rerun to resume it")
    return time.monotonic() - t0


def summarise(out: Path, variants: list[str], seeds: list[int]) -> dict:
    """{variant: {row: {"miou": [mean, std, n], "contour_f": [...]}}} over the finished seeds."""
    table: dict = {}
    for v in variants:
        per_row: dict = {key: {"miou": [], "contour_f": []} for key, _ in ROWS}
        for s in seeds:
            f = run_dir(out, v, s) / "results.json"
            if not f.is_file():
                continue
            res = json.loads(f.read_text())
            for key, _ in ROWS:
                for m in ("miou", "contour_f"):
                    if res[key][m] is not None:
                        per_row[key][m].append(100 * res[key][m])
        table[v] = {key: {m: stats(vals) for m, vals in ms.items()} for key, ms in per_row.items()}
    return table


def stats(vals: list[float]) -> list:
    """[mean, sample std (ddof 1; 0 for one value), n, the values]; [None, None, 0, []] if empty."""
    if not vals:
        return [None, None, 0, []]
    a = np.asarray(vals, dtype=np.float64)
    return [float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, int(a.size),
            [round(float(x), 2) for x in a]]


def per_class_means(out: Path, variants: list[str], seeds: list[int]) -> dict:
    """{variant: {row: {class: mean val IoU in %}}} over the seeds whose eval/<row>_val.json exists."""
    means: dict = {}
    for v in variants:
        for key, _ in ROWS:
            runs = [json.loads(f.read_text())["per_class_iou"] for s in seeds
                    if (f := run_dir(out, v, s) / "eval" / f"{key}_val.json").is_file()]
            if runs:
                means.setdefault(v, {})[key] = {c: 100 * float(np.mean([r[c] for r in runs]))
                                                for c in runs[0]}
    return means


def format_per_class(means: dict) -> str:
    """One row per (variant, artifact): the mean per-class val IoU."""
    classes = next((list(rows[k]) for rows in means.values() for k in rows), [])
    lines = ["| stage-1 variant | artifact | " + " | ".join(classes) + " |",
             "|" + " --- |" * (2 + len(classes))]
    titles = dict(ROWS)
    for v, rows in means.items():
        for key, ious in rows.items():
            lines.append(f"| {VARIANTS[v][0]} | {titles[key]} | "
                         + " | ".join(f"{ious[c]:.1f}" for c in classes) + " |")
    return "\n".join(lines)


def format_markdown(table: dict) -> str:
    head = "| stage-1 variant | flags | seeds | " + " | ".join(t for _, t in ROWS) + " |"
    lines = [head, "|" + " --- |" * (3 + len(ROWS))]
    for v, rows in table.items():
        n = rows["final"]["miou"][2] or rows["cam"]["miou"][2]
        cells = []
        for key, _ in ROWS:
            mi, fc = rows[key]["miou"], rows[key]["contour_f"]
            cells.append("-" if mi[0] is None else
                         f"{mi[0]:.2f} ± {mi[1]:.2f} / {fc[0]:.2f} ± {fc[1]:.2f}")
        lines.append(f"| {VARIANTS[v][0]} | `{VARIANTS[v][1]}` | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the runs and the table")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    p.add_argument("--table_only", action="store_true", help="only tabulate the finished runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.table_only and not out.is_dir():
        raise UserError(f"{out}: --out is not a directory (nothing to tabulate)")
    out.mkdir(parents=True, exist_ok=True)
    wall = 0.0
    if not args.table_only:
        for s in args.seeds:          # seed-major: a partial ablation has every variant
            for v in args.variants:
                wall += run_one(out, v, s, args.python)
    table = summarise(out, args.variants, args.seeds)
    per_class = per_class_means(out, args.variants, args.seeds)
    md = ("val mIoU / contour F (%), mean ± sample std over the seeds\n\n" + format_markdown(table)
          + "\n\nper-class val IoU (%), mean over the seeds\n\n" + format_per_class(per_class))
    with atomic_path(out / "ablation.json") as tmp:
        Path(tmp).write_text(json.dumps({"seeds": args.seeds, "table": table, "per_class_iou": per_class,
                                         "wall_time_s": wall}, indent=2))
    with atomic_path(out / "ablation.md") as tmp:
        Path(tmp).write_text(md + "\n")
    print(md)
    if wall:
        print(f"\nwall time of the runs made now: {wall:.0f} s")


if __name__ == "__main__":
    run_main(main, "ablate")
