"""Training-loop plumbing shared by the three stages (data loading, DDP, AMP, logging, checkpoints).

Each stage script keeps its own loss and model; everything here is stage-agnostic:

* ``make_loader``   — each process's share of every global batch (:class:`GlobalBatchSampler`).
* ``wrap_ddp``      — DistributedDataParallel when world > 1 (never DataParallel).
* ``autocast``      — bf16 autocast on CUDA when ``--amp``; a no-op on the CPU.
* ``channels_last`` — the channels_last memory format of ``--channels_last``.
* ``iterate_steps`` — yields (step, batch) over epochs until ``max_step`` (resumable).
* ``TrainLogger``   — tqdm bar with img/s on rank 0 and TensorBoard scalars.
* ``save_weights`` / ``save_train_state`` / ``load_train_state`` — atomic, pickle-free checkpoints.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from lib import dist
from lib.errors import UserError, check_args
from lib.io import atomic_path
from lib.optim import LR_MULT


def add_common_train_args(p: argparse.ArgumentParser) -> None:
    """Flags every training stage shares (our additions to the original's flags)."""
    p.add_argument("--backbone_width", type=float, default=1.0,
                   help="channel multiplier of ResNet-38 (1.0 = the paper; 0.125 for CPU demos)")
    p.add_argument("--max_steps", type=int, default=None,
                   help="stop after this many optimiser steps (default: epochs x steps per epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored on the CPU)")
    p.add_argument("--channels_last", action="store_true",
                   help="weights and input batches in channels_last memory format (with --amp the "
                        "fast layout of tensor-core convolutions; docs/PERFORMANCE.md). For CUDA: "
                        "on the CPU, torch 2.14 crashed intermittently in channels_last training "
                        "of DeepLab-v1")
    p.add_argument("--resume", default=None, help="training-state file (<session>.state.pth) to resume")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--save_every", type=int, default=0,
                   help="also save the training state every N steps (0: only at the end)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True,
                   help="the network's dropout layers (--no-dropout: p = 0, for short "
                        "from-scratch runs such as the CPU demo)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                   help="sgd = the original's poly SGD; adamw = poly AdamW with the same groups, "
                        "for training from random initialisation (the CPU demo)")
    p.add_argument("--lr_mults", type=float, nargs=4, default=list(LR_MULT),
                   metavar=("W", "B", "NEW_W", "NEW_B"),
                   help="learning-rate multipliers of the four groups: backbone weights, backbone "
                        "biases, new layers' weights, new biases (default: the original's "
                        "1 2 10 20; the from-scratch demo uses 1 1 1 1, since no layer is "
                        "pretrained)")


def add_weak_stage_args(p: argparse.ArgumentParser, session_default: str) -> None:
    """The original's flags shared by stage 1 (train_cam) and stage 2 (train_aff), same names
    and defaults, plus the BN regime switch (``--no-frozen_bn`` for from-scratch runs)."""
    p.add_argument("--batch_size", type=int, default=8, help="global batch over all processes")
    p.add_argument("--max_epoches", "--epochs", dest="max_epoches", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--num_workers", type=int, default=8)
    p.add_argument("--wt_dec", "--weight_decay", dest="wt_dec", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum; default reproduces the original's quirk (momentum = wt_dec)")
    p.add_argument("--train_list", default="train_aug", help="split name or list file")
    p.add_argument("--session_name", default=session_default,
                   help="checkpoint path without .pth")
    p.add_argument("--crop_size", type=int, default=448, help="square training crop")
    p.add_argument("--weights", default=None,
                   help="ImageNet weights (.params or .pth); 'none' trains from scratch (demos)")
    p.add_argument("--voc12_root", "--data_root", dest="voc12_root", required=True)
    p.add_argument("--dataset", default="voc", choices=["voc", "coco"])
    p.add_argument("--tblog_dir", default=None, help="TensorBoard dir (default <session_name>_tb)")
    p.add_argument("--no_color_jitter", action="store_true")
    p.add_argument("--frozen_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="the original's regime: BatchNorms in eval mode and conv1a/b2* frozen; "
                        "--no-frozen_bn trains BN statistics and the stem (from-scratch demos)")


# Allowed ranges of the numeric training flags (lib.errors.check_args); flags a stage lacks
# are skipped.
TRAIN_ARG_RANGES = {
    "batch_size": ">= 1", "max_epoches": ">= 1", "lr": "> 0", "num_workers": ">= 0",
    "wt_dec": ">= 0", "momentum": "[0, 1)", "crop_size": ">= 1", "backbone_width": "> 0",
    "max_steps": ">= 1", "save_every": ">= 0", "threads": ">= 0", "lr_mults": ">= 0",
    "resize_long": ">= 1",
}


def check_train_args(args: argparse.Namespace, extra: dict[str, str] | None = None) -> None:
    """Reject values the flags' types accept but training cannot use (``--lr -1``,
    ``--num_workers -3``, ...) with ``UserError`` naming the flag, before any work starts."""
    check_args(args, {**TRAIN_ARG_RANGES, **(extra or {})})
    rl = getattr(args, "resize_long", None)
    if rl and rl[0] > rl[1]:
        raise UserError(f"--resize_long: needs LO <= HI, got {rl[0]} {rl[1]}")


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's share of each global batch, in the single-process order.

    Every rank draws the same permutation from its own copy of the seeded ``generator`` (the one
    the DataLoader also draws its worker seed from, so the stream is exactly that of a
    single-process ``DataLoader(shuffle=True, generator=...)``), cuts it into global batches of
    ``global_batch`` images and keeps the slice :func:`lib.dist.shard_bounds` gives the rank
    (10 over 4 -> 3, 3, 2, 2). Together the K ranks see, step by step, the images one process
    sees with the whole batch.
    """

    def __init__(self, num_items: int, global_batch: int, rank: int, world: int,
                 generator: torch.Generator, shuffle: bool = True, drop_last: bool = True):
        dist.shard_sizes(global_batch, world)  # refuses a batch smaller than the world
        tail = num_items % global_batch
        if not drop_last and 0 < tail < world:
            raise UserError(f"--batch_size: the last batch of {tail} image(s) cannot be split "
                            f"over {world} processes; drop it or change the batch size")
        self.num_items, self.global_batch = num_items, global_batch
        self.rank, self.world = rank, world
        self.generator, self.shuffle, self.drop_last = generator, shuffle, drop_last

    def __iter__(self):
        n, gb = self.num_items, self.global_batch
        order = (torch.randperm(n, generator=self.generator).tolist() if self.shuffle
                 else list(range(n)))
        for b0 in range(0, n, gb):
            batch = order[b0:b0 + gb]
            if len(batch) < gb and self.drop_last:
                break
            start, stop = dist.shard_bounds(len(batch), self.rank, self.world)
            yield batch[start:stop]
        if self.shuffle:
            # RandomSampler draws one more (empty) permutation when it is exhausted; doing the
            # same keeps the generator's stream, and so a single process's epochs, unchanged.
            torch.randperm(n, generator=self.generator)

    def __len__(self) -> int:
        full, tail = divmod(self.num_items, self.global_batch)
        return full + (bool(tail) and not self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """No-op: each epoch's order is the next draw of the generator, as on a single process."""


def _reseed_worker_for_rank(rank: int, worker_id: int) -> None:
    """worker_init_fn of rank > 0: every rank's loader has the same seeded generator (for the
    common batch order), so its workers would repeat rank 0's augmentation draws; offset them."""
    import random

    import numpy as np

    s = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def make_loader(dataset, global_batch: int, rank: int, world: int, seed: int, num_workers: int,
                shuffle: bool = True, drop_last: bool = True):
    """DataLoader of this process's share of each global batch; returns (loader, sampler).

    The sampler is a :class:`GlobalBatchSampler` (``set_epoch`` is a no-op); with one process
    the batches are exactly those of ``DataLoader(shuffle=True, generator=Generator(seed))``.
    """
    if len(dataset) < global_batch and drop_last:
        raise UserError(f"--batch_size: the dataset has {len(dataset)} images, fewer than the "
                        f"batch of {global_batch}")
    g = torch.Generator().manual_seed(seed)
    sampler = GlobalBatchSampler(len(dataset), global_batch, rank, world, g, shuffle=shuffle,
                                 drop_last=drop_last)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), generator=g,
                        worker_init_fn=(functools.partial(_reseed_worker_for_rank, rank) if rank > 0
                                        else None),
                        persistent_workers=num_workers > 0)
    return loader, sampler


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    """The original's ``max_step = (N_train // batch) * epochs`` uses this per-epoch count."""
    return max(1, num_images // global_batch)


def wrap_ddp(model: torch.nn.Module, device: torch.device, world: int,
             find_unused: bool = False) -> torch.nn.Module:
    model = model.to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)
    return model


def autocast(enabled: bool, device: torch.device):
    """bf16 autocast on CUDA when enabled; fp32 everywhere else (CPU bf16 is slower here)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(x, enabled: bool):
    """``x`` (a module or an (N, C, H, W) tensor) in channels_last memory format when enabled."""
    return x.to(memory_format=torch.channels_last) if enabled else x


def iterate_steps(loader, sampler, max_step: int, start_step: int = 0):
    """Yield (step, batch) for step in [start_step, max_step), cycling epochs.

    A resumed run skips the batches of the epoch already consumed, so the schedule position
    (learning rate, epoch count) matches an uninterrupted run.
    """
    n = len(loader)
    if n == 0:
        raise UserError("the data loader yields no batch (dataset smaller than the batch?)")
    step = start_step
    epoch = start_step // n
    skip = start_step % n
    while step < max_step:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if skip:
                if i < skip:
                    continue
                skip = 0
            yield step, batch
            step += 1
            if step >= max_step:
                return
        epoch += 1


class TrainLogger:
    """tqdm bar (rank 0) with images/s and the running losses, plus TensorBoard scalars."""

    def __init__(self, tb_dir: str | None, max_step: int, start_step: int, global_batch: int,
                 desc: str):
        from tqdm import tqdm

        self.main = dist.is_main()
        self.global_batch = global_batch
        self.writer = None
        if self.main and tb_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tb_dir)
        self.bar = tqdm(total=max_step, initial=start_step, desc=desc, disable=not self.main,
                        dynamic_ncols=True)
        self.t0 = time.time()
        self.start_step = start_step
        self.avg: dict[str, float] = {}

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.avg[k] = v if k not in self.avg else 0.9 * self.avg[k] + 0.1 * v
        if not self.main:
            return
        done = step + 1 - self.start_step
        ips = done * self.global_batch / max(1e-9, time.time() - self.t0)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/images_per_s", ips, step)
        shown = [k for k in ("total", "loss", "cls") if k in self.avg][:1] or list(self.avg)[:1]
        self.bar.set_postfix({"img/s": f"{ips:.1f}", **{k: f"{self.avg[k]:.3f}" for k in shown}})
        self.bar.update(1)

    def images_per_second(self, step: int) -> float:
        return (step + 1 - self.start_step) * self.global_batch / max(1e-9, time.time() - self.t0)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Final weights: a plain state_dict without ``module.`` prefix (loads with weights_only)."""
    with atomic_path(path) as tmp:
        torch.save(dist.unwrap(model).state_dict(), tmp)


def save_train_state(path: str | Path, model, optimizer, step: int, args: argparse.Namespace) -> None:
    """Everything ``--resume`` needs; only tensors and plain containers (weights_only-loadable)."""
    state = {"model": dist.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "step": int(step), "args": json.dumps(vars(args), default=str)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: str | Path, model, optimizer) -> int:
    """Restore model and optimiser from a training-state file; returns the step to continue at."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise SystemExit(f"--resume: {path} is not a training-state file ({e})") from e
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        raise SystemExit(f"--resume: {path} lacks model/optimizer/step entries")
    dist.unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def write_run_config(path: str | Path, args: argparse.Namespace, extra: dict | None = None) -> None:
    """Record the effective configuration next to the checkpoint (JSON)."""
    cfg = {**vars(args), **(extra or {})}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(cfg, indent=2, default=str))


class TrainingRun:
    """The bookkeeping every stage's loop shares around its own loss.

    ``start`` wraps the model for DDP, restores ``--resume``, records the run config next to
    the checkpoint and opens the logger; ``after_step`` writes the periodic training state
    (``--save_every``); ``finish`` saves ``<session>.pth`` (plain state_dict) and the final state.
    """

    def __init__(self, args: argparse.Namespace, desc: str, global_batch: int, max_step: int):
        self.args, self.desc = args, desc
        self.global_batch, self.max_step = global_batch, max_step
        self.session = Path(args.session_name)
        self.logger: TrainLogger | None = None

    def start(self, model, optimizer, device: torch.device, world: int, extra: dict):
        """Returns (model wrapped for DDP, first step)."""
        model = wrap_ddp(model, device, world)
        start = load_train_state(self.args.resume, model, optimizer) if self.args.resume else 0
        if dist.is_main():
            write_run_config(f"{self.session}.config.json", self.args,
                             {"world_size": world, "max_step": self.max_step, **extra})
        self.logger = TrainLogger(self.args.tblog_dir or f"{self.session}_tb", self.max_step,
                                  start, self.global_batch, desc=self.desc)
        return model, start

    def after_step(self, step: int, model, optimizer, scalars: dict[str, float]) -> None:
        self.logger.log(step, scalars)
        every = self.args.save_every
        if every and (step + 1) % every == 0 and dist.is_main():
            save_train_state(f"{self.session}.state.pth", model, optimizer, step + 1, self.args)

    def finish(self, model, optimizer, step: int) -> None:
        self.logger.close()
        if dist.is_main():
            save_weights(model, f"{self.session}.pth")
            save_train_state(f"{self.session}.state.pth", model, optimizer, self.max_step,
                             self.args)
            print(f"{self.desc}: saved {self.session}.pth ({self.max_step} steps, "
                  f"{self.logger.images_per_second(step):.1f} img/s)")
        dist.barrier()
        dist.cleanup()


def load_backbone_weights(model, weights: str | None, desc: str) -> str | None:
    """ImageNet weights (``.params``/``.pth``) into the trunk; None/'none' = random init."""
    from lib.weights import load_imagenet_weights

    if weights and weights.lower() != "none":
        load_imagenet_weights(model, weights)
        return weights
    if dist.is_main():
        print(f"{desc}: no --weights given, training from random initialisation")
    return None
