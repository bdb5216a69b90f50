"""Time and peak memory of the feature similarity loss, dense vs blocked (lib/losses/feature_similarity.py).

Each (size, mode) case runs forward + backward in its own subprocess so that peak memory can be
read per case: on CPU the peak resident set (ru_maxrss) of the case minus that of a baseline
subprocess that only imports torch and builds the inputs; on CUDA torch.cuda.max_memory_allocated
minus the inputs. The dense loss needs several (N, HW, HW) matrices; a case whose estimate does
not fit in the available memory is reported as skipped instead of being run.

    python -m tools.bench.bench_fsl [--sizes 56 112] [--batch 8] [--channels 21] [--repeats 2]
                              [--threads 1] [--device cpu] [--blocks 0 128 1024]

``--blocks`` times the blocked loss at several block sizes B (0 = the default for the device,
``default_block_size``), to choose the default by measurement on a new machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

from lib.errors import RunError, UserError, check_args, run_main

# Live (N, HW, HW) matrices at the dense loss's peak (pair-distance outputs, kernel temporaries,
# the dy matrix saved for backward and its gradient); 6 matches the measured CPU peak at 56x56.
DENSE_MATRICES = 6


def dense_estimate_bytes(batch: int, size: int, itemsize: int = 4) -> int:
    hw = size * size
    return DENSE_MATRICES * batch * hw * hw * itemsize


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RunError("/proc/meminfo: cannot read MemAvailable")


def _worker(mode: str, size: int, batch: int, channels: int, repeats: int, threads: int, device: str,
            block: int = 0) -> dict:
    """Run one case in this process; returns timings (s), peak memory (bytes) and the loss value."""
    import torch

    from lib.losses.feature_similarity import feature_similarity_loss

    torch.set_num_threads(threads)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, size, size, generator=g).to(dev)
    pred0 = torch.softmax(torch.randn(batch, channels, size, size, generator=g), 1).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_cuda = torch.cuda.memory_allocated(dev)
    times, value = [], float("nan")
    for _ in range(repeats if mode != "none" else 0):
        pred = pred0.clone().requires_grad_(True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        kwargs = {"block_size": block} if mode == "blocked" and block > 0 else {}
        loss = feature_similarity_loss(image, pred, mode=mode, **kwargs)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
        value = loss.item()
        del loss, pred
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base_cuda
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"times": times, "peak": peak, "loss": value}


def _run_case(mode: str, size: int, args, block: int = 0) -> dict:
    cmd = [sys.executable, "-m", "tools.bench.bench_fsl", "--_worker", mode, "--sizes", str(size),
           "--blocks", str(block),
           "--batch", str(args.batch), "--channels", str(args.channels), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--device", args.device]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[56, 112], help="square map sizes H = W")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=21, help="K = C + 1 prediction channels")
    ap.add_argument("--repeats", type=int, default=2, help="timed forward+backward runs per case (best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", nargs="+", default=["dense", "blocked"], choices=["dense", "blocked"])
    ap.add_argument("--blocks", type=int, nargs="+", default=[0],
                    help="block sizes B of the blocked loss (0 = the device's default)")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    check_args(args, {"repeats": ">= 1", "batch": ">= 1", "channels": ">= 1", "sizes": ">= 1",
                      "threads": ">= 1", "blocks": ">= 0"})

    if args._worker is not None:
        print(json.dumps(_worker(args._worker, args.sizes[0], args.batch, args.channels, args.repeats,
                                 args.threads, args.device, args.blocks[0])))
        return

    import torch

    on_cpu = not args.device.startswith("cuda")
    print(f"feature similarity loss forward+backward, batch {args.batch}, {args.channels} channels, "
          f"mu 2.5, sigma 5, device {args.device}, threads {args.threads}, "
          f"best of {args.repeats}, torch {torch.__version__}")
    print("peak memory = " + ("max RSS of the case minus a baseline process (inputs only)" if on_cpu
                              else "max CUDA memory allocated beyond the inputs"))
    header = f"{'size':>7} | {'mode':>14} | {'time (s)':>9} | {'peak MB':>8} | {'loss':>13} | note"
    print(header)
    print("-" * len(header))
    values = {}
    for size in args.sizes:
        baseline = _run_case("none", size, args)["peak"] if on_cpu else 0
        label, dense_value = f"{size}x{size}", None
        cases = [(m, b) for m in args.modes for b in (args.blocks if m == "blocked" else [0])]
        for mode, block in cases:
            name = mode if mode == "dense" else f"blocked B={block or 'auto'}"
            if mode == "dense":
                need = dense_estimate_bytes(args.batch, size)
                avail = available_bytes(args.device)
                if need > 0.8 * avail:
                    print(f"{label:>7} | {name:>14} | {'-':>9} | {'-':>8} | {'-':>13} | skipped "
                          f"(needs ~{need / 2**30:.1f} GB, {avail / 2**30:.1f} GB available)")
                    continue
            res = _run_case(mode, size, args, block)
            if "error" in res:
                print(f"{label:>7} | {name:>14} | {'-':>9} | {'-':>8} | {'-':>13} | failed: {res['error']}")
                continue
            values[(size, name)] = res["loss"]
            note = ""
            if mode == "dense":
                dense_value = res["loss"]
            elif dense_value is not None:
                rel = abs(res["loss"] - dense_value) / max(abs(dense_value), 1e-30)
                note = f"rel. diff vs dense {rel:.1e}"
            peak_mb = (res["peak"] - baseline) / 2**20
            print(f"{label:>7} | {name:>14} | {min(res['times']):9.3f} | {peak_mb:8.0f} | "
                  f"{res['loss']:13.6e} | {note}")
    if not math.isfinite(sum(values.values()) if values else 0.0):
        raise RunError(f"non-finite loss {values}")


if __name__ == "__main__":
    run_main(main, "bench_fsl")
