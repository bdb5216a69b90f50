"""One code path for a CPU process, one GPU, or many processes under ``torchrun``.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python -m ...`` has none of them and
runs as a world of one. Gradients are averaged by DistributedDataParallel, and every stage splits
its global ``--batch_size`` evenly over the processes, so the effective batch is the same as the
original's single DataParallel batch.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist


def setup_distributed(device_arg: str = "auto") -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun.

    Returns (rank, world_size, device). Backend: nccl on CUDA, gloo otherwise.
    ``device_arg``: 'auto' (CUDA if available), 'cpu' or 'cuda'.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world_size, device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch(global_batch: int, world: int) -> int:
    """Split the global batch over processes; refuse a split that would change its size."""
    if global_batch % world:
        from lib.errors import UserError

        raise UserError(f"--batch_size: {global_batch} is not divisible by the {world} processes")
    return global_batch // world


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
