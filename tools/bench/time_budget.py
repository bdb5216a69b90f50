"""Wall time of every step of run_all_voc.sh (measured or estimated) and the disk of its
artifact folders.

Measured (``--bench DIR``, the output folder of tools/bench/gpu_check.sh): every step's time comes
from the benchmark JSON files there and nothing else (:func:`measured_budget`): training
images / the measured training images/s; inference the slower of the network (measured
images/s) and the CRF pool (tools.bench.bench_crf's measured images/s with the pool size ``auto``
gives, lib/workers.py). A step without its measurement is NOT MEASURED and so is the total;
files not from CUDA at width 1.0 are refused. This is the table to quote.

Estimated (without ``--bench``; printed under an ESTIMATE banner) -- the model below:

Per step: images x per-image cost, where the network (GPU) and the CPU pool (CRF) overlap:

    wall = max(images * gpu_s_per_image / gpus,  images * cpu_s_per_image / cpu_workers)

GPU cost per image: the network's FLOPs (forward + backward for training; every scale and flip
for inference), counted exactly with ``torch.utils.flop_counter`` on the meta device
(``--count_flops`` recounts them), divided by an effective throughput (--tflops_fp32,
--tflops_bf16: assumptions, not measurements); a ``tools.bench.bench_pipeline --preset paper --json``
file (--pipeline_json, e.g. from tools/bench/gpu_check.sh) replaces the estimate with measured images/s.
CPU cost per image: the dense CRF (tools.bench.bench_crf: --crf_s for alpha 2 + 4, --final_crf_s for
the 21-label test CRF), the random walk (--walk_s, tools.bench.bench_random_walk), evaluation
(--eval_ips, tools.bench.bench_evaluate). Data loading is assumed to keep up (tools.bench.bench_loader).

Columns: "defaults" = run_all_voc.sh as shipped (fp32, --crf_workers auto: 14 in infer_cam and
16 in infer_seg on 16 cores, lib/workers.py),
"tuned" = bf16 (--amp) where the script has it and a CRF pool on every free core, both on one
GPU with --cores CPU cores; "4 GPUs" = tuned with NPROC=4 and 4 x --cores cores.

    python -m tools.bench.time_budget --bench exp/gpu_check [--markdown]      # measured
    python -m tools.bench.time_budget [--pipeline_json F] [--markdown]           # estimate
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lib.errors import UserError, run_main
from tools.bench._bench import format_table

# VOC 2012 + SBD list sizes and the schedules of run_all_voc.sh (script / config defaults).
N_TRAIN_AUG, N_VAL, N_TRAIN = 10582, 1449, 1464
STAGE12_IMAGES = (N_TRAIN_AUG // 8) * 8 * 8     # (N // batch) steps x 8 epochs x batch 8
STAGE3_IMAGES = 20000 * 10                      # ITERATIONS x BATCH of voc/config_voc2012.py
# TFLOP per image at width 1.0 (FlopCounterMode, meta device; --count_flops): training = one
# crop of 448 forward + backward (stage 1: plus the 0.3x view); inference = a 375x500 image.
TFLOP = {"cam_train": 2.442, "aff_train": 2.247, "seg_train": 2.754,
         "cam_infer": 11.450, "aff_infer": 0.762, "seg_infer": 15.069}
# Disk: uncompressed float32 npz = 4 bytes per value (+ ~0.5 kB header), one 375x500 map per
# present class (CAM) or per present class + background (CRF); VOC has ~1.5 classes per image.
MAP_MB = 375 * 500 * 4 / 1e6
CLASSES_PER_IMAGE = 1.5


def count_flops() -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from lib.models import build_model

    def tflop(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 1e12

    out = {}
    with torch.device("meta"):
        cam, aff = build_model("cam", num_classes=20), build_model("aff")
        seg = build_model("deeplabv1", num_classes=20)
        x = torch.randn(1, 3, 448, 448)

        def cam_train():
            o1 = cam(x)
            o2 = cam(F.interpolate(x, scale_factor=0.3, mode="bilinear", align_corners=True))
            (o1.cam.sum() + o1.cam_rv.sum() + o2.cam.sum() + o2.cam_rv.sum()).backward()
        out["cam_train"] = tflop(cam_train)
        out["aff_train"] = tflop(lambda: aff(x).sum().backward())
        out["seg_train"] = tflop(lambda: seg(x)[0].sum().backward())
        cam.eval(), aff.eval(), seg.eval()
        with torch.no_grad():
            def scales(fn, ss):
                for s in ss:
                    fn(torch.randn(2, 3, round(375 * s), round(500 * s)))
            out["cam_infer"] = tflop(lambda: scales(cam.forward_cam, (0.5, 1.0, 1.5, 2.0)))
            out["aff_infer"] = tflop(lambda: aff.forward_features(torch.randn(1, 3, 376, 504)))
            out["seg_infer"] = tflop(lambda: scales(seg, (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)))
    return out


def gpu_seconds(key: str, bf16: bool, args, measured: dict) -> tuple[float, str]:
    """(seconds per image, 'measured' | 'estimate') of one network pass of ``key``."""
    kind = "train" if key.endswith("train") else "infer"
    mode = "bf16_cl" if bf16 else "fp32"
    ips = measured.get((kind, key.split("_")[0], mode))
    if ips:
        return 1.0 / ips, "measured"
    return TFLOP[key] / (args.tflops_bf16 if bf16 else args.tflops_fp32), "estimate"


def budget(args, measured: dict) -> list[dict]:
    from lib.workers import split_cores

    cores = args.cores
    tuned_workers = max(1, cores - 2)       # the main process and a loader worker keep 2 cores
    rows = []

    def step(name, images, gpu_key=None, cpu_s=0.0, default_workers=2, amp_flag=True,
             extra_gpu_s=0.0):
        r = {"step": name, "images": images}
        for col, gpus, bf16, workers in (("defaults_min", 1, False, default_workers),
                                         ("tuned_min", 1, amp_flag, tuned_workers),
                                         ("4gpu_min", 4, amp_flag, tuned_workers)):
            g, src = (gpu_seconds(gpu_key, bf16, args, measured) if gpu_key else (0.0, ""))
            if src:
                r["gpu_cost"] = src if col == "defaults_min" else r.get("gpu_cost")
            gpu_wall = images * (g + extra_gpu_s) / gpus
            cpu_wall = images * cpu_s / (workers * gpus) if cpu_s else 0.0
            r[col] = max(gpu_wall, cpu_wall) / 60
            if col == "defaults_min":
                r["bound"] = "GPU" if gpu_wall >= cpu_wall else "CPU"
        rows.append(r)

    n12 = STAGE12_IMAGES
    step("train_cam", n12, "cam_train")
    for split, n in (("val", N_VAL), ("train_aug", N_TRAIN_AUG)):
        # infer_cam has no --amp: fp32 in every column; the CRF pool is --crf_workers.
        step(f"infer_cam_{split}", n, "cam_infer", cpu_s=args.crf_s, amp_flag=False,
             default_workers=split_cores(cores)["infer_cam_crf"])
    for name, n in (("eval_cam+crf_val", 2 * N_VAL), ("eval_cam+crf_train", 2 * N_TRAIN)):
        step(name, n, cpu_s=1.0 / args.eval_ips, default_workers=2)
    step("train_aff", n12, "aff_train")
    for split, n in (("val", N_VAL), ("train_aug", N_TRAIN_AUG)):
        # the walk runs in the main process: on the GPU (dense) when there is one
        step(f"infer_aff_{split}", n, "aff_infer", amp_flag=False, extra_gpu_s=args.walk_s)
    step("eval_rw_val+train", N_VAL + N_TRAIN, cpu_s=1.0 / args.eval_ips)
    step("train_seg", STAGE3_IMAGES, "seg_train")
    for split, n in (("val", N_VAL), ("train", N_TRAIN)):
        step(f"infer_seg_{split}", n, "seg_infer", cpu_s=args.final_crf_s, default_workers=cores)
    step("eval_final_val+train", N_VAL + N_TRAIN, cpu_s=1.0 / args.eval_ips)
    total = {"step": "total", "images": None}
    for col in ("defaults_min", "tuned_min", "4gpu_min"):
        total[col] = sum(r[col] for r in rows)
    rows.append(total)
    return rows


# What each step of run_all_voc.sh runs: (step, images, bench_pipeline (kind, stage), CRF case
# of tools.bench.bench_crf or None, whether the CRF pool shares the cores with loaders: infer_cam's).
MEASURED_STEPS = (
    ("train_cam", STAGE12_IMAGES, ("train", "cam"), None, False),
    ("infer_cam_val", N_VAL, ("infer", "cam"), "stage1", True),
    ("infer_cam_train_aug", N_TRAIN_AUG, ("infer", "cam"), "stage1", True),
    ("train_aff", STAGE12_IMAGES, ("train", "aff"), None, False),
    ("infer_aff_val", N_VAL, ("infer", "aff"), None, False),
    ("infer_aff_train_aug", N_TRAIN_AUG, ("infer", "aff"), None, False),
    ("train_seg", STAGE3_IMAGES, ("train", "seg"), None, False),
    ("infer_seg_val", N_VAL, ("infer", "seg"), "final", False),
    ("infer_seg_train", N_TRAIN, ("infer", "seg"), "final", False),
)
# Precision modes per column: the defaults train and infer in fp32; "tuned" = --amp
# --channels_last in training and infer_seg --amp (infer_cam / infer_aff have no --amp).
COLUMN_MODES = {"defaults_min": {"train": "fp32", "infer": "fp32", "infer_seg": "fp32"},
                "tuned_min": {"train": "bf16_cl", "infer": "fp32", "infer_seg": "bf16"}}


def load_bench(path: str | Path) -> tuple[list[dict], list[dict], dict]:
    """(bench_pipeline rows, bench_crf rows, environment) of a tools/bench/gpu_check.sh output folder
    (bench_pipeline.json, bench_compile.json, bench_crf.json) or of one bench_pipeline JSON
    file (bench_crf.json beside it). Refuses files that are not measurements at the paper's
    width on CUDA: a CPU or demo-width run says nothing about a VOC run's time."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    main = path / "bench_pipeline.json" if path.is_dir() else path
    if not main.is_file():
        raise UserError(f"{main}: no bench_pipeline JSON (run tools/bench/gpu_check.sh on a GPU machine)")
    try:
        data = json.loads(main.read_text())
        rows, env = list(data["rows"]), dict(data.get("environment", {}))
        for extra in ("bench_compile.json",):
            if (folder / extra).is_file():
                rows += json.loads((folder / extra).read_text())["rows"]
        crf = (json.loads((folder / "bench_crf.json").read_text())["rows"]
               if (folder / "bench_crf.json").is_file() else [])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{main}: not a benchmark JSON ({e})") from None
    if not str(env.get("device", "")).startswith("cuda"):
        raise UserError(f"{main}: measured on {env.get('device', 'an unknown device')}, not CUDA: "
                        f"no GPU figures in it")
    rows = [r for r in rows if r.get("width") == 1.0]
    if not rows:
        raise UserError(f"{main}: no rows at the paper's width 1.0 (run with --preset paper)")
    return rows, crf, env


def crf_rate(crf_rows: list[dict], case: str, workers: int) -> float | None:
    """Measured images/s of the CRF ``case`` with the largest measured pool <= ``workers``."""
    rows = [r for r in crf_rows if r.get("case") == case and r.get("img_per_s")
            and 0 < r.get("workers", 0) <= workers]
    return max(rows, key=lambda r: r["workers"])["img_per_s"] if rows else None


def measured_budget(rows: list[dict], crf_rows: list[dict], cores: int) -> list[dict]:
    """Minutes per step of run_all_voc.sh on one GPU from measurements only (module docstring).
    ``cores``: the CPU cores of the run (the ``auto`` pool sizes). A value that needs a missing
    measurement is None with ``source`` 'NOT MEASURED'; so is the total then."""
    from lib.workers import split_cores

    ips = {(r["kind"], r["stage"], r["mode"]): r["img_per_s"] for r in rows if r.get("img_per_s")}
    out = []
    for name, images, (kind, stage), crf_case, loaders in MEASURED_STEPS:
        r = {"step": name, "images": images, "source": "measured"}
        for col, modes in COLUMN_MODES.items():
            mode = modes["infer_seg"] if (kind, stage) == ("infer", "seg") else modes[kind]
            gpu = ips.get((kind, stage, mode))
            wall = images / gpu if gpu else None
            if crf_case and wall is not None:
                workers = split_cores(cores)["infer_cam_crf"] if loaders else cores
                rate = crf_rate(crf_rows, crf_case, workers)
                wall = None if rate is None else max(wall, images / rate)
                if col == "defaults_min" and rate and gpu:
                    r["bound"] = "GPU" if gpu <= rate else f"CPU ({workers} CRF workers)"
            elif col == "defaults_min" and gpu:
                r["bound"] = "GPU"
            r[col] = None if wall is None else wall / 60
            if wall is None:
                r["source"] = "NOT MEASURED"
        out.append(r)
    total = {"step": "total", "images": None, "source": "measured"}
    for col in COLUMN_MODES:
        vals = [r[col] for r in out]
        total[col] = None if None in vals else sum(vals)
        if None in vals:
            total["source"] = "NOT MEASURED"
    out.append(total)
    return out


def disk() -> list[dict]:
    k = CLASSES_PER_IMAGE
    rows = []
    for split, n in (("train_aug", N_TRAIN_AUG), ("val", N_VAL)):
        rows.append({"folder": f"plabels/{split}/cam", "files": n, "mb_per_file": k * MAP_MB})
        for a in ("2.0", "4.0"):
            rows.append({"folder": f"plabels/{split}/crf/alpha_{a}", "files": n,
                         "mb_per_file": (k + 1) * MAP_MB})
    for r in rows:
        r["gb_float32"] = r["files"] * r["mb_per_file"] / 1e3
        r["gb_float16"] = r["gb_float32"] / 2
    rows.append({"folder": "total", "gb_float32": sum(r["gb_float32"] for r in rows),
                 "gb_float16": sum(r["gb_float16"] for r in rows)})
    return rows


def load_measured(path: str | None) -> dict:
    if not path:
        return {}
    rows = json.loads(Path(path).read_text())["rows"]
    return {(r["kind"], r["stage"], r["mode"]): r["img_per_s"] for r in rows
            if r.get("img_per_s") and r.get("width") == 1.0}


def markdown(rows: list[dict], columns) -> str:
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.1f}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=None,
                    help="tools/bench/gpu_check.sh output folder (or its bench_pipeline.json): the "
                         "measured table, from measurements only")
    ap.add_argument("--pipeline_json", default=None,
                    help="estimate mode: bench_pipeline JSON at width 1.0 replacing GPU estimates")
    ap.add_argument("--tflops_fp32", type=float, default=150.0,
                   help="assumed effective TFLOP/s of fp32 (TF32 convolutions) on one GPU")
    ap.add_argument("--tflops_bf16", type=float, default=300.0,
                   help="assumed effective TFLOP/s of bf16 autocast + channels_last on one GPU")
    ap.add_argument("--crf_s", type=float, default=2.0,
                    help="core-seconds of the alpha 2 + 4 CRF per image (tools.bench.bench_crf)")
    ap.add_argument("--final_crf_s", type=float, default=1.8,
                    help="core-seconds of the 21-label test CRF per image (tools.bench.bench_crf)")
    ap.add_argument("--walk_s", type=float, default=0.02,
                    help="seconds of the random walk per image in the main process (GPU dense)")
    ap.add_argument("--eval_ips", type=float, default=300.0, help="evaluation images/s per core")
    ap.add_argument("--cores", type=int, default=16, help="CPU cores per GPU")
    ap.add_argument("--count_flops", action="store_true", help="recount TFLOP (about 30 s)")
    ap.add_argument("--markdown", action="store_true", help="markdown tables (docs/PERFORMANCE.md)")
    args = ap.parse_args(argv)
    if min(args.tflops_fp32, args.tflops_bf16, args.crf_s, args.final_crf_s, args.eval_ips) <= 0:
        raise UserError("throughputs and costs must be positive")
    fmt = markdown if args.markdown else format_table
    if args.bench:
        rows, crf, env = load_bench(args.bench)
        print(f"MEASURED on {env.get('gpu', env.get('device'))} + {args.cores} cores "
              f"({args.bench}): minutes per step of run_all_voc.sh on one GPU; evaluation "
              f"steps (< 1 min) not included")
        print(fmt(measured_budget(rows, crf, args.cores),
                  ("step", "images", "source", "bound", "defaults_min", "tuned_min")))
        return 0
    if args.count_flops:
        TFLOP.update(count_flops())
        print("TFLOP per image:", {k: round(v, 3) for k, v in TFLOP.items()})
    rows = budget(args, load_measured(args.pipeline_json))
    cols = ("step", "images", "gpu_cost", "bound", "defaults_min", "tuned_min", "4gpu_min")
    dcols = ("folder", "files", "mb_per_file", "gb_float32", "gb_float16")
    print("ESTIMATE: assumed GPU throughputs, not measurements; the measured table is "
          "`python -m tools.bench.time_budget --bench exp/gpu_check` after tools/bench/gpu_check.sh")
    print(fmt(rows, cols))
    print()
    print(fmt(disk(), dcols))
    return 0


if __name__ == "__main__":
    run_main(main, "time_budget")
