"""One code path for a CPU process, one GPU, or many processes under ``torchrun``.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python -m ...`` has none of them and
runs as a world of one.

K processes compute what one process computes on the whole batch (the original's DataParallel):

* the batch flags and configs mean the **global** batch, split over the processes as evenly as
  possible (:func:`shard_sizes`: 10 over 4 -> 3, 3, 2, 2);
* every loss is normalised by its **global** count: a process computes its local sum divided by
  the all-reduced count (:func:`all_reduce_sum`, :func:`batch_share`), so the K local losses add
  up to the single-process loss; DistributedDataParallel *averages* gradients, hence the local
  loss is back-propagated multiplied by the world size (:func:`world_size`);
* the logged losses are the global values (:func:`global_parts`).
See docs/DISTRIBUTED.md for the measured equivalence.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from lib.errors import UserError


def setup_distributed(device_arg: str = "auto") -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun.

    Returns (rank, world_size, device). Backend: nccl on CUDA with one GPU per process, gloo
    otherwise -- on the CPU, and when a node runs more processes than it has GPUs (they share
    the GPUs round-robin, ``LOCAL_RANK % device_count``; NCCL refuses two ranks on one GPU).
    ``device_arg``: 'auto' (CUDA if available), 'cpu' or 'cuda'.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg == "cuda"
    if use_cuda:
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        shared_gpu = use_cuda and local_world > torch.cuda.device_count()
        dist.init_process_group("nccl" if use_cuda and not shared_gpu else "gloo")
    return rank, world_size, device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), indexed by rank; ``[obj]`` in a world of one."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_sizes(global_batch: int, world: int) -> list[int]:
    """Images of each process in a global batch: as even as possible, the larger shares first
    (10 over 4 -> [3, 3, 2, 2]). Every process needs at least one image."""
    if global_batch < world:
        raise UserError(f"--batch_size: the global batch of {global_batch} image(s) cannot be split over "
                         f"{world} processes (each needs one); use a batch >= {world}")
    base, extra = divmod(global_batch, world)
    return [base + (r < extra) for r in range(world)]


def shard_bounds(global_batch: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of this rank's images within a global batch (see :func:`shard_sizes`)."""
    sizes = shard_sizes(global_batch, world)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a (detached) tensor over all processes; a copy of it in a world of one."""
    t = t.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def batch_share(n_local: int, device: torch.device | str = "cpu") -> float:
    """n_local / N_global: the weight of this process's per-image mean in the global mean.

    A loss that is a mean over images (and a fixed number of elements per image) has the global
    value sum_r share_r * mean_r; back-propagating ``world_size() * share * mean_r`` on every rank
    gives, after DDP's averaging, the gradient of the global mean.
    """
    if not dist.is_initialized():
        return 1.0  # n / n, without a device tensor to read back (a host sync on a GPU)
    total = all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=device))
    return n_local / float(total)


def global_parts(parts: dict[str, float | torch.Tensor],
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum each logged value over the processes (one all-reduce); callers pass each process's
    *contribution* (its local sum over the global count), so the sum is the global value.

    Values may be floats or 0-d tensors (on ``device``): they are stacked in float64 and read
    back to the host once (one synchronisation per step instead of one per value)."""
    if not parts:
        return {}
    keys = list(parts)
    if all(isinstance(parts[k], (int, float)) for k in keys) and not dist.is_initialized():
        return {k: float(parts[k]) for k in keys}
    vals = torch.stack([torch.as_tensor(parts[k]).detach().to(device=device, dtype=torch.float64)
                        .reshape(()) for k in keys])
    vals = all_reduce_sum(vals)
    return {k: float(v) for k, v in zip(keys, vals.tolist())}


def seed_everything(seed: int, rank: int = 0) -> torch.Generator:
    """Seed python, numpy and torch (offset by rank so processes draw different crops)."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP, so saved state_dicts carry no ``module.`` prefix."""
    return model.module if hasattr(model, "module") else model


def shard(items: list, rank: int, world: int) -> list:
    """Items processed by this rank in inference loops (strided, so work is balanced)."""
    return items[rank::world]
