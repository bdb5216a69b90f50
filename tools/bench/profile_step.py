"""Where a training step's time goes: a torch.profiler breakdown of one stage-1 (train_cam) and
one stage-3 (train_seg) step.

The step is the scripts' own: ``stage1_cam.train_cam.stage1_loss`` / ``stage3_seg.train_seg.
seg_loss`` (built by ``tools.bench.bench_pipeline.train_case``), backward and the SGD step. Those
functions carry ``torch.profiler.record_function`` labels (free outside a profiler), which are
the rows of the summary:

    stage 1: forward.view1 (the crop and its 0.3x view's resize), forward.view2,
             loss.classification (GAP/IS/RV, importance sampling), loss.seam (ER + ECR),
             loss.fsl
    stage 3: forward, loss.ce, loss.fsl
    both:    backward, optimizer.step, and step (the whole step)

After ``--warmup`` steps (autotuning, allocations) one step is profiled. Printed: the labelled
rows (milliseconds and share of the step) and torch's ``key_averages`` table sorted by device
(CUDA) time on a GPU, by CPU time on the CPU, ``--row_limit`` rows. ``--markdown F`` writes both
as markdown, ``--json F`` every row.

    python -m tools.bench.profile_step                                # CPU, tiny sizes, ~30 s
    python -m tools.bench.profile_step --preset paper --device cuda --mode bf16_cl --json prof.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from lib.errors import UserError, run_main
from lib.io import atomic_path

LABELS = {"cam": ("forward.view1", "forward.view2", "loss.classification", "loss.seam",
                  "loss.fsl", "backward", "optimizer.step"),
          "seg": ("forward", "loss.ce", "loss.fsl", "backward", "optimizer.step")}
PRESETS = {  # width, stage -> (crop, batch)
    "tiny": dict(width=0.0625, cam=(64, 2), seg=(64, 2)),
    "paper": dict(width=1.0, cam=(448, 8), seg=(448, 10)),
}


def _times(e) -> tuple[float, float]:
    """(CPU total, device total) in microseconds of a key_averages entry."""
    dev = getattr(e, "device_time_total", None)
    if dev is None:
        dev = getattr(e, "cuda_time_total", 0.0)
    return float(e.cpu_time_total), float(dev or 0.0)


def profile_stage(stage: str, width: float, crop: int, batch: int, mode: str,
                  device: torch.device, warmup: int = 1):
    """(torch.profiler.profile of one step after ``warmup`` steps, label rows)."""
    from lib.models import disable_dropout
    from lib.optim import build_optimizer
    from tools.bench import bench_pipeline as bp

    model, loss_fn, images = bp.train_case(stage, width, crop, batch, device)
    m = bp.prepare(model, mode, device)
    disable_dropout(m)
    x = bp.to_mode(images, mode)
    opt = build_optimizer("sgd", m.param_groups(), lr=1e-4, weight_decay=5e-4, max_step=10 ** 6,
                          momentum=0.9)
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        with record_function("step"):
            opt.zero_grad(set_to_none=True)
            with bp.autocast_ctx(mode, device):
                loss = loss_fn(m, x, gen)
            with record_function("backward"):
                loss.backward()
            with record_function("optimizer.step"):
                opt.step()

    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    avg = {e.key: e for e in prof.key_averages()}
    use_dev = device.type == "cuda"
    total = _times(avg["step"])[1 if use_dev else 0] if "step" in avg else 0.0
    rows = []
    for label in ("step", *LABELS[stage]):
        if label not in avg:
            continue
        cpu, dev = _times(avg[label])
        rows.append({"stage": stage, "label": label, "cpu_ms": cpu / 1e3,
                     "device_ms": dev / 1e3 if use_dev else None,
                     "share": ((dev if use_dev else cpu) / total) if total else None})
    return prof, rows


def labels_markdown(rows: list[dict]) -> str:
    lines = ["| stage | part | CPU ms | device ms | share of the step |", "|---|---|---|---|---|"]
    for r in rows:
        dev = "-" if r["device_ms"] is None else f"{r['device_ms']:.1f}"
        share = "-" if r["share"] is None else f"{100 * r['share']:.0f} %"
        lines.append(f"| {r['stage']} | {r['label']} | {r['cpu_ms']:.1f} | {dev} | {share} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", default=["cam", "seg"], choices=["cam", "seg"])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="tiny: width 0.0625, crop 64, batch 2 (CPU); paper: width 1.0, 448, "
                        "batch 8 (stage 1) / 10 (stage 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--mode", default=None, choices=["fp32", "fp32_cl", "bf16", "bf16_cl"],
                   help="precision / layout (tools.bench.bench_pipeline modes; default: bf16_cl on "
                        "CUDA, fp32 on the CPU)")
    p.add_argument("--warmup", type=int, default=1, help="unprofiled steps first")
    p.add_argument("--row_limit", type=int, default=25)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--markdown", default=None, help="write the tables as markdown here")
    p.add_argument("--json", default=None, help="write every key_averages row here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tools.bench.bench_pipeline import resolve_device

    if args.warmup < 0 or args.row_limit < 1:
        raise UserError("--warmup must be >= 0 and --row_limit >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    mode = args.mode or ("bf16_cl" if device.type == "cuda" else "fp32")
    sizes = PRESETS[args.preset]
    sort_key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    md, label_rows, all_rows = [], [], []
    for stage in args.stages:
        crop, batch = sizes[stage]
        prof, rows = profile_stage(stage, sizes["width"], crop, batch, mode, device, args.warmup)
        label_rows += rows
        table = prof.key_averages().table(sort_by=sort_key, row_limit=args.row_limit)
        head = (f"{stage}: {crop}x{crop} batch {batch}, width {sizes['width']}, {mode}, "
                f"{device}, sorted by {sort_key}")
        print(f"\n{head}\n{table}")
        md += [f"### {head}", "", "```", table.rstrip(), "```", ""]
        for e in prof.key_averages():
            cpu, dev = _times(e)
            all_rows.append({"stage": stage, "name": e.key, "count": e.count,
                             "cpu_time_total_us": cpu, "self_cpu_time_total_us":
                             float(e.self_cpu_time_total), "device_time_total_us": dev})
    summary = labels_markdown(label_rows)
    print("\n" + summary)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            Path(tmp).write_text(summary + "\n\n" + "\n".join(md))
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps({"device": str(device), "mode": mode,
                                             "preset": args.preset, "labels": label_rows,
                                             "rows": all_rows}, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main, "profile_step")
