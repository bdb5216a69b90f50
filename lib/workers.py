"""``auto`` worker counts: the CPU cores this process may use, shared between its data loaders and
its CRF pool.

The share of one process is ``cores = max(1, len(os.sched_getaffinity(0)) // LOCAL_WORLD_SIZE)``:
the affinity mask (what ``taskset``, cgroups' cpusets and container limits leave, unlike
``os.cpu_count()``; ``nproc`` is no guide either, since it prints 1 under ``OMP_NUM_THREADS=1``)
divided among the processes torchrun starts on this node. Of that share:

* training loaders (``--num_workers auto`` of stages 1-2): ``min(8, cores - 1)`` worker
  processes (8 = the original's fixed count; one core stays with the training process);
* inference loaders (``infer_cam`` / ``infer_aff`` ``--num_workers auto``): ``min(2, cores // 4)``
  (reading and resizing one image is cheap next to the network; 0 = in the main process on
  small machines);
* the CRF pool (``--crf_workers auto``): every core the loaders leave, ``max(1, cores -
  loaders)`` (the CRF, one core per image, bounds a GPU run of ``infer_cam``; the main process
  mostly waits on the GPU).

So a 16-core box gives train 8, infer loader 2 + CRF 14; a 2-core machine train 1, infer loader 0
+ CRF 2 (the old defaults of the CPU demo). An integer is taken as given.
"""
from __future__ import annotations

import argparse
import os

AUTO = "auto"
TRAIN_LOADER_MAX = 8
INFER_LOADER_MAX = 2


def workers_arg(text: str) -> int | str:
    """argparse ``type`` of a worker-count flag: ``auto`` or an integer (the scripts' range
    checks, ``lib.errors.check_args``, refuse a negative one with the usual one-line error)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 0, got {text!r}") from None


def available_cores() -> int:
    """Cores of this process's share: the affinity mask over the node's torchrun processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS / Windows have no affinity mask
        cores = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cores // local)


def split_cores(cores: int) -> dict[str, int]:
    """The ``auto`` counts for a share of ``cores`` (module docstring): ``train_loader``,
    ``infer_loader``, and ``infer_cam_crf`` (the CRF pool beside infer_cam's loaders)."""
    infer_loader = min(INFER_LOADER_MAX, cores // 4)
    return {"train_loader": min(TRAIN_LOADER_MAX, cores - 1), "infer_loader": infer_loader,
            "infer_cam_crf": max(1, cores - infer_loader)}


def train_loader_workers(value: int | str) -> int:
    """``--num_workers`` of a training stage: ``value`` or, for ``auto``, min(8, cores - 1)."""
    if value != AUTO:
        return int(value)
    return split_cores(available_cores())["train_loader"]


def infer_loader_workers(value: int | str) -> int:
    """``--num_workers`` of an inference stage: ``value`` or, for ``auto``, min(2, cores // 4)."""
    if value != AUTO:
        return int(value)
    return split_cores(available_cores())["infer_loader"]


def crf_workers(value: int | str, loader_workers: int = 0) -> int:
    """``--crf_workers``: ``value`` or, for ``auto``, the cores the ``loader_workers`` leave
    (at least 1)."""
    if value != AUTO:
        return int(value)
    return max(1, available_cores() - loader_workers)


def main() -> None:
    """``python -m lib.workers``: the ``auto`` counts of this process (tools/bench/gpu_check.sh)."""
    cores = available_cores()
    print(" ".join([f"cores={cores}"] + [f"{k}={v}" for k, v in split_cores(cores).items()]))


if __name__ == "__main__":
    main()
