"""Timing, memory and table helpers shared by the ``tools.bench_*`` scripts.

* :func:`time_fn`     — best / median wall seconds over repeats after warm-up runs; synchronises
                         CUDA before and after each run so asynchronous kernels are counted.
* :func:`reset_peak` / :func:`peak_bytes` — peak memory of a measured case: CUDA
                         ``max_memory_allocated``, else the process's peak resident set
                         (monotone over the process, so on the CPU it bounds, not isolates, a case).
* :func:`format_table` — fixed-width text table of a list of dict rows.
* :func:`write_json`   — the rows plus an environment header (torch version, device, threads).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], repeats: int, device: torch.device,
            warmup: int = 1, on_warm: Callable[[], object] | None = None) -> tuple[float, float]:
    """(best, median) wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs
    (allocations, cached indices, kernel selection, compilation). ``on_warm()`` runs between
    the two (e.g. :func:`reset_peak`, so that the peak is that of the steady state)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    if on_warm is not None:
        sync(device)
        on_warm()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """CUDA: bytes allocated at the peak since :func:`reset_peak`; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as a '|'-separated table; floats with 3 significant digits, missing cells '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
              for i, c in enumerate(columns)]
    lines = [" | ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "host": platform.node()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_json(path: str | os.PathLike, rows: Sequence[dict], device: torch.device,
               **extra) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(device), **extra, "rows": list(rows)},
                               indent=2, default=str))
