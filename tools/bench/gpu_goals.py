"""The goal lines of tools/bench/gpu_check.sh: each performance goal of a GPU machine against what the check measured.

    python -m tools.bench.gpu_goals exp/gpu_check [--cores N]

reads the check's output folder (bench_pipeline.json, bench_compile.json, bench_crf.json, via
``tools.bench.time_budget.load_bench``) and prints one line per goal:

    goal: <text>: measured <X> vs goal <Y>: PASS | FAIL | NOT MEASURED

A goal is NOT MEASURED when its figures are missing, or when the benchmark did not run on CUDA
at the paper's sizes (a CPU run of the check measures nothing about these goals). The goals
(one H200, 16 cores):

* stage-1 training, bf16 + channels_last, 448 / batch 8: >= 100 img/s, and >= 2x its fp32;
* stage-3 training (bf16 or bf16 + channels_last, 448 / batch 10): >= 80 img/s;
* infer_cam with its defaults (fp32 network, ``auto`` CRF pool): >= 12 img/s, i.e. the slower
  of the network's measured rate and the measured CRF pool's;
* run_all_voc.sh with the defaults on one GPU, budgeted from measurements
  (``tools.bench.time_budget.measured_budget``): <= 75 min;
* peak GPU memory per stage at the paper's batch known, and the batch trainable on a 24 GB card
  (the largest stage's peak in its leanest measured mode <= 24 GB).
"""
from __future__ import annotations

import argparse

from lib.errors import UserError, run_main

PAPER_SHAPES = {"cam": "448x448 b8", "aff": "448x448 b8", "seg": "448x448 b10"}
GOALS = {"cam_bf16_cl": 100.0, "cam_speedup": 2.0, "seg_train": 80.0, "infer_cam": 12.0,
         "run_min": 75.0, "card_gb": 24.0}


def _line(text: str, measured: str | None, goal: str, ok: bool | None) -> str:
    verdict = "NOT MEASURED" if measured is None else ("PASS" if ok else "FAIL")
    return f"goal: {text}: measured {measured or '-'} vs goal {goal}: {verdict}"


def goal_lines(rows: list[dict], crf_rows: list[dict], cores: int) -> list[str]:
    """One line per goal from bench_pipeline rows (CUDA, width 1.0) and bench_crf rows."""
    from lib.workers import split_cores
    from tools.bench.time_budget import crf_rate, measured_budget

    def ips(kind, stage, mode, paper=True):
        r = next((r for r in rows if (r["kind"], r["stage"], r["mode"]) == (kind, stage, mode)
                  and r.get("img_per_s") and r.get("check", "ok") == "ok"
                  and (not paper or kind != "train" or r.get("shape") == PAPER_SHAPES[stage])),
                 None)
        return r["img_per_s"] if r else None

    out = []
    fast, fp32 = ips("train", "cam", "bf16_cl"), ips("train", "cam", "fp32")
    out.append(_line("stage-1 training bf16 + channels_last at 448 / batch 8",
                     None if fast is None else f"{fast:.1f} img/s",
                     f">= {GOALS['cam_bf16_cl']:.0f} img/s",
                     fast is not None and fast >= GOALS["cam_bf16_cl"]))
    ratio = fast / fp32 if fast and fp32 else None
    out.append(_line("stage-1 training bf16 + channels_last over its fp32",
                     None if ratio is None else f"{ratio:.2f}x", f">= {GOALS['cam_speedup']:.0f}x",
                     ratio is not None and ratio >= GOALS["cam_speedup"]))
    seg = [v for v in (ips("train", "seg", "bf16"), ips("train", "seg", "bf16_cl")) if v]
    best = max(seg) if seg else None
    out.append(_line("stage-3 training (best of bf16, bf16 + channels_last) at 448 / batch 10",
                     None if best is None else f"{best:.1f} img/s",
                     f">= {GOALS['seg_train']:.0f} img/s",
                     best is not None and best >= GOALS["seg_train"]))
    workers = split_cores(cores)["infer_cam_crf"]
    net, pool = ips("infer", "cam", "fp32"), crf_rate(crf_rows, "stage1", workers)
    rate = min(net, pool) if net and pool else None
    out.append(_line(f"infer_cam with its defaults ({cores} cores: {workers} CRF workers)",
                     None if rate is None else
                     f"{rate:.1f} img/s (network {net:.1f}, CRF pool {pool:.1f})",
                     f">= {GOALS['infer_cam']:.0f} img/s",
                     rate is not None and rate >= GOALS["infer_cam"]))
    total = measured_budget(rows, crf_rows, cores)[-1]["defaults_min"]
    out.append(_line("run_all_voc.sh with the defaults on one GPU, budgeted from measurements",
                     None if total is None else f"{total:.0f} min",
                     f"<= {GOALS['run_min']:.0f} min",
                     total is not None and total <= GOALS["run_min"]))
    peaks = {}
    for stage in ("cam", "aff", "seg"):
        got = {r["mode"]: r["peak_mib"] / 1024 for r in rows
               if (r["kind"], r["stage"]) == ("train", stage) and r.get("peak_mib")
               and r.get("shape") == PAPER_SHAPES[stage] and r.get("check", "ok") == "ok"}
        if got:
            peaks[stage] = min(got.items(), key=lambda kv: kv[1])
    lean = max(v for _, v in peaks.values()) if len(peaks) == 3 else None
    shown = ", ".join(f"{s} {v:.1f} GiB ({m})" for s, (m, v) in peaks.items())
    out.append(_line("peak GPU memory per stage at the paper's batch (leanest mode), largest "
                     "<= a 24 GB card", None if lean is None else shown,
                     f"<= {GOALS['card_gb']:.0f} GB",
                     lean is not None and lean * 2 ** 30 <= GOALS["card_gb"] * 1e9))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="tools/bench/gpu_check.sh output folder (GPU_CHECK_OUT)")
    ap.add_argument("--cores", type=int, default=None,
                    help="CPU cores of the run (default: this process's affinity mask)")
    args = ap.parse_args(argv)
    from lib.workers import available_cores
    from tools.bench.time_budget import load_bench

    cores = args.cores or available_cores()
    try:
        rows, crf, _ = load_bench(args.folder)
    except UserError as e:  # a CPU run, or no benchmark: every goal unmeasured, said why
        print(f"gpu_goals: {e}")
        rows, crf = [], []
    for line in goal_lines(rows, crf, cores):
        print(line)
    return 0


if __name__ == "__main__":
    run_main(main, "gpu_goals")
