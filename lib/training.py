"""Training-loop plumbing shared by the three stages (data loading, DDP, AMP, logging, checkpoints).

Each stage script keeps its own loss and model; everything here is stage-agnostic:

* ``make_loader``   — each process's share of every global batch (:class:`GlobalBatchSampler`).
* ``wrap_ddp``      — DistributedDataParallel when world > 1 (never DataParallel).
* ``autocast``      — bf16 autocast on CUDA when ``--amp``; a no-op on the CPU.
* ``channels_last`` — the channels_last memory format of ``--channels_last``.
* ``iterate_steps`` — yields (step, batch) over epochs until ``max_step`` (resumable).
* ``TrainLogger``   — rank 0: a tqdm bar on a terminal, plain periodic lines in a log file;
  TensorBoard scalars.
* ``save_weights`` / ``save_train_state`` / ``load_train_state`` — atomic, pickle-free,
  byte-reproducible checkpoints with a sha256 sidecar (``lib.checkpoint``).

Resuming is exact: an interrupted run continued with ``--resume <session>.state.pth`` gives the
same weights as an uninterrupted one (same machine and process count), because everything
random is a function of the run's state at a step boundary:

* data order: the sampler's permutation is a function of (seed, epoch) (``GlobalBatchSampler``);
* augmentation: each sample draws ``default_rng([seed, epoch, index])`` (the datasets'
  ``seed``/``set_epoch``), independent of the loader's workers;
* the training step (dropout, importance sampling): the torch CPU/CUDA RNG states and any
  named generators are saved in the state file and restored (``rng_state``/``set_rng_state``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from lib import dist
from lib.checkpoint import check_fits, load_verified, save_checkpoint
from lib.cli import add_backbone_width, add_bool, add_data_args, add_num_workers, not_in_paper
from lib.errors import RunError, UserError, check_args
from lib.io import atomic_path
from lib.optim import LR_MULT


def add_common_train_args(p: argparse.ArgumentParser) -> None:
    """Flags every training stage shares (our additions to the original's flags)."""
    add_backbone_width(p)
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
    p.add_argument("--accum_steps", type=int, default=1,
                   help="gradient accumulation: each process's share of the global batch runs as "
                        "this many micro-batches, one optimiser step (the same gradient where BN "
                        "is frozen and the loss is a per-image mean; docs/PERFORMANCE.md)")
    demo = not_in_paper(p)
    demo.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True,
                      help="the network's dropout layers (the paper: on; --no-dropout: p = 0, for "
                           "short from-scratch runs such as the CPU demo)")
    demo.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                      help="sgd = the paper's / original's poly SGD; adamw = poly AdamW with the "
                           "same groups, for training from random initialisation (the CPU demo)")
    demo.add_argument("--lr_mults", type=float, nargs=4, default=list(LR_MULT),
                      metavar=("W", "B", "NEW_W", "NEW_B"),
                      help="learning-rate multipliers of the four groups: backbone weights, "
                           "backbone biases, new layers' weights, new biases (default: the "
                           "original's 1 2 10 20; the from-scratch demo uses 1 1 1 1 in stages "
                           "1-2, since no layer is pretrained)")


def add_weak_stage_args(p: argparse.ArgumentParser, session_default: str) -> None:
    """The original's flags shared by stage 1 (train_cam) and stage 2 (train_aff), same names
    and defaults, plus the BN regime switch (``--no-frozen_bn`` for from-scratch runs)."""
    p.add_argument("--batch_size", type=int, default=8, help="global batch over all processes")
    p.add_argument("--max_epoches", "--epochs", dest="max_epoches", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    add_num_workers(p)
    p.add_argument("--wt_dec", "--weight_decay", dest="wt_dec", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum; default reproduces the original's quirk (momentum = wt_dec)")
    p.add_argument("--train_list", default="train_aug", help="split name or list file")
    p.add_argument("--session_name", default=session_default,
                   help="checkpoint path without .pth")
    p.add_argument("--crop_size", "--crop", dest="crop_size", type=int, default=448,
                   help="square training crop")
    p.add_argument("--weights", default=None,
                   help="ImageNet weights (.params or .pth); 'none' trains from scratch (demos)")
    add_data_args(p)
    p.add_argument("--tblog_dir", default=None, help="TensorBoard dir (default <session_name>_tb)")
    add_bool(p, "color_jitter", True, "colour jitter of the training crops (the original's)",
             old="--no_color_jitter")
    not_in_paper(p).add_argument(
        "--frozen_bn", action=argparse.BooleanOptionalAction, default=True,
        help="the paper's regime: BatchNorms in eval mode and conv1a/b2* frozen; --no-frozen_bn "
             "trains BN statistics and the stem (from-scratch demos)")


# Allowed ranges of the numeric training flags (lib.errors.check_args); flags a stage lacks
# are skipped.
TRAIN_ARG_RANGES = {
    "batch_size": ">= 1", "max_epoches": ">= 1", "lr": "> 0", "num_workers": ">= 0",
    "wt_dec": ">= 0", "momentum": "[0, 1)", "crop_size": ">= 1", "backbone_width": "> 0",
    "max_steps": ">= 1", "save_every": ">= 0", "threads": ">= 0", "lr_mults": ">= 0",
    "resize_long": ">= 1", "accum_steps": ">= 1",
}


def check_train_args(args: argparse.Namespace, extra: dict[str, str] | None = None) -> None:
    """Reject values the flags' types accept but training cannot use (``--lr -1``,
    ``--num_workers -3``, ...) with ``UserError`` naming the flag, before any work starts.
    ``--num_workers auto`` is resolved here (``lib.workers.train_loader_workers``)."""
    from lib.workers import train_loader_workers

    if getattr(args, "num_workers", None) is not None:
        args.num_workers = train_loader_workers(args.num_workers)
    check_args(args, {**TRAIN_ARG_RANGES, **(extra or {})})
    rl = getattr(args, "resize_long", None)
    if rl and rl[0] > rl[1]:
        raise UserError(f"--resize_long: needs LO <= HI, got {rl[0]} {rl[1]}")


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's share of each global batch; the order is a function of (seed, epoch).

    Every rank draws the same permutation of the dataset, ``randperm(n)`` from a generator seeded
    with ``seed + epoch`` (``set_epoch``; as ``DistributedSampler`` does, and also for a single
    process, so a resumed run sees the order of the interrupted one), cuts it into global batches
    of ``global_batch`` images and keeps the slice :func:`lib.dist.shard_bounds` gives the rank
    (10 over 4 -> 3, 3, 2, 2). Together the K ranks see, step by step, the images one process
    sees with the whole batch. ``set_epoch(epoch, skip=k)`` starts that epoch at its k-th batch
    without loading the ones before (a mid-epoch resume).
    """

    def __init__(self, num_items: int, global_batch: int, rank: int, world: int, seed: int,
                 shuffle: bool = True, drop_last: bool = True):
        dist.shard_sizes(global_batch, world)  # refuses a batch smaller than the world
        tail = num_items % global_batch
        if not drop_last and 0 < tail < world:
            raise UserError(f"--batch_size: the last batch of {tail} image(s) cannot be split "
                            f"over {world} processes; drop it or change the batch size")
        self.num_items, self.global_batch = num_items, global_batch
        self.rank, self.world, self.seed = rank, world, int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches (dataset indices), before the split over ranks."""
        n, gb = self.num_items, self.global_batch
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        batches = [order[b0:b0 + gb] for b0 in range(0, n, gb)]
        if batches and len(batches[-1]) < gb and self.drop_last:
            batches.pop()
        return batches

    def __iter__(self):
        for batch in self.global_batches()[self.skip:]:
            start, stop = dist.shard_bounds(len(batch), self.rank, self.world)
            yield batch[start:stop]

    def __len__(self) -> int:
        full, tail = divmod(self.num_items, self.global_batch)
        return full + (bool(tail) and not self.drop_last)


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

    The sampler is a :class:`GlobalBatchSampler`; :func:`iterate_steps` sets its epoch.
    """
    if len(dataset) < global_batch and drop_last:
        raise UserError(f"--batch_size: the dataset has {len(dataset)} images, fewer than the "
                        f"batch of {global_batch}")
    sampler = GlobalBatchSampler(len(dataset), global_batch, rank, world, seed, shuffle=shuffle,
                                 drop_last=drop_last)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available(), generator=g,
                        worker_init_fn=(functools.partial(_reseed_worker_for_rank, rank) if rank > 0
                                        else None),
                        persistent_workers=num_workers > 0)
    return loader, sampler


def set_epoch(loader, sampler, epoch: int, skip: int = 0) -> None:
    """Point the sampler's order (from its ``skip``-th batch) and the dataset's augmentation
    seeds at ``epoch``."""
    if sampler is not None:
        sampler.set_epoch(epoch, skip)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


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

    A resumed run starts its epoch at the first batch not yet consumed (the sampler skips the
    others without loading them), so the schedule position and the data match an uninterrupted
    run.
    """
    n = len(loader)
    if n == 0:
        raise UserError("the data loader yields no batch (dataset smaller than the batch?)")
    step = start_step
    epoch = start_step // n
    skip = start_step % n
    while step < max_step:
        set_epoch(loader, sampler, epoch, skip)
        skip = 0
        for batch in loader:
            yield step, batch
            step += 1
            if step >= max_step:
                return
        epoch += 1


class TrainLogger:
    """Rank 0's progress: a tqdm bar with images/s and the running loss when stderr is a
    terminal; otherwise (a log file) one plain line at the first and last step and every
    ``plain_every_s`` seconds, so the log's tail is readable. TensorBoard scalars either way."""

    plain_every_s = 30.0

    def __init__(self, tb_dir: str | None, max_step: int, start_step: int, global_batch: int,
                 desc: str):
        from tqdm import tqdm

        self.main = dist.is_main()
        self.desc, self.max_step = desc, max_step
        self.tty = sys.stderr.isatty()
        self.last_line = -math.inf
        self.global_batch = global_batch
        self.writer = None
        if self.main and tb_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tb_dir)
        self.bar = tqdm(total=max_step, initial=start_step, desc=desc,
                        disable=not (self.main and self.tty), dynamic_ncols=True)
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
        now = time.time()
        if not self.tty and (step == self.start_step or step + 1 == self.max_step
                             or now - self.last_line >= self.plain_every_s):
            self.last_line = now
            losses = " ".join(f"{k} {self.avg[k]:.4f}" for k in shown)
            lr = f" lr {scalars['lr']:.3g}" if "lr" in scalars else ""
            print(f"{self.desc}: step {step + 1}/{self.max_step} {losses}{lr} {ips:.1f} img/s",
                  file=sys.stderr, flush=True)

    def images_per_second(self, step: int) -> float:
        return (step + 1 - self.start_step) * self.global_batch / max(1e-9, time.time() - self.t0)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# Settings that do not change what a run computes: a resumed run may use other values.
RESUME_FREE_KEYS = frozenset({"resume", "save_every", "threads", "num_workers", "tblog_dir",
                              "image_every", "device", "WORKERS"})


def run_config(args: argparse.Namespace, extra: dict | None = None) -> dict:
    """The effective configuration of a run as plain JSON values (arguments + ``extra``)."""
    return json.loads(json.dumps({**vars(args), **(extra or {})}, default=str))


def renamed_flags(saved: dict) -> dict:
    """A run config recorded before the flags took their shared names (lib.cli), in today's
    names: ``voc12_root`` -> ``data_root``, ``no_color_jitter`` -> ``color_jitter`` (negated),
    ``workers`` -> ``num_workers``, ``crop`` -> ``crop_size``; a state written then still
    resumes."""
    out = dict(saved)
    if "no_color_jitter" in out and "color_jitter" not in out:
        out["color_jitter"] = not out.pop("no_color_jitter")
    for old, new in (("voc12_root", "data_root"), ("workers", "num_workers"), ("crop", "crop_size")):
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def config_differences(saved: dict, now: dict) -> list[str]:
    """``key: state X, now Y`` for every setting (outside RESUME_FREE_KEYS) that differs."""
    out = []
    for k in sorted(set(saved) | set(now)):
        if k in RESUME_FREE_KEYS:
            continue
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{d}" for d in config_differences(a, b)]
        elif a != b:
            out.append(f"{k}: state {a!r}, now {b!r}")
    return out


def check_finite_weights(model, where: str) -> None:
    """RunError naming the first non-finite tensor: a diverged model is never saved."""
    for k, v in dist.unwrap(model).state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RunError(f"{where}: non-finite values in {k}; training diverged, nothing saved")


def rng_state(device: torch.device, generators: dict[str, torch.Generator]) -> dict:
    """This process's RNG states: torch CPU, the CUDA device's, and the named generators."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    for name, g in generators.items():
        state[f"generator.{name}"] = g.get_state()
    return state


def set_rng_state(state: dict, device: torch.device, generators: dict[str, torch.Generator],
                  path) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, g in generators.items():
        if f"generator.{name}" not in state:
            raise UserError(f"{path}: the training state has no RNG state of '{name}'")
        g.set_state(state[f"generator.{name}"])


def gather_rng_states(device: torch.device, generators: dict[str, torch.Generator]) -> list[dict]:
    """Every rank's ``rng_state`` (collective under torchrun), indexed by rank."""
    return dist.all_gather_object(rng_state(device, generators))


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Final weights: a plain state_dict without ``module.`` prefix (loads with weights_only),
    byte-reproducible, written atomically with its ``.sha256`` sidecar."""
    check_finite_weights(model, str(path))
    save_checkpoint(dist.unwrap(model).state_dict(), path)


def save_train_state(path: str | Path, model, optimizer, step: int, config: dict,
                     rng: list[dict]) -> None:
    """Everything ``--resume`` needs; only tensors and plain containers (weights_only-loadable):
    model, optimizer, step, the run config (JSON) and every rank's RNG states."""
    check_finite_weights(model, str(path))
    state = {"model": dist.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "step": int(step), "config": json.dumps(config, sort_keys=True), "rng": rng}
    save_checkpoint(state, path)


def load_train_state(path: str | Path, model, optimizer, config: dict | None = None):
    """Restore model and optimiser from a training-state file.

    ``config`` (``run_config`` of the current run) must equal the state's outside
    RESUME_FREE_KEYS, else a UserError lists the differences. Returns (step to continue at,
    the per-rank RNG states or None for a state file that has none).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: --resume: training-state file does not exist")
    state = load_verified(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "step"} <= set(state):
        raise UserError(f"{path}: --resume: not a training-state file (no model/optimizer/step)")
    if config is not None and "config" in state:
        diff = config_differences(renamed_flags(json.loads(state["config"])), config)
        if diff:
            more = f"; {len(diff) - 5} more" if len(diff) > 5 else ""
            raise UserError(f"{path}: --resume: the state was written by a run with other "
                            f"settings ({'; '.join(diff[:5])}{more}); rerun with those "
                            f"settings, or delete the state file to start over")
    check_fits(state["model"], dist.unwrap(model).state_dict(), path)
    dist.unwrap(model).load_state_dict(state["model"], strict=False)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"{path}: --resume: the optimiser state does not fit ({e})") from e
    return int(state["step"]), state.get("rng")


def write_run_config(path: str | Path, config: dict) -> None:
    """Record the effective configuration next to the checkpoint (JSON, atomic)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2, default=str))


class TrainingRun:
    """The bookkeeping every stage's loop shares around its own loss.

    ``start`` wraps the model for DDP, restores ``--resume`` (weights, optimiser, RNG states)
    and opens the logger; ``check_loss`` stops a diverged run; ``after_step`` writes the
    periodic training state (``--save_every``); ``finish`` saves ``<session>.pth`` (plain
    state_dict), its run config ``<session>.config.json`` and the final state. Nothing next to
    the checkpoint is written before the run saves, so a failed rerun leaves the previous
    checkpoint and its config intact.
    """

    def __init__(self, args: argparse.Namespace, desc: str, global_batch: int, max_step: int):
        self.args, self.desc = args, desc
        self.global_batch, self.max_step = global_batch, max_step
        self.session = Path(args.session_name)
        self.logger: TrainLogger | None = None
        self.config: dict = {}
        self.device = torch.device("cpu")
        self.generators: dict[str, torch.Generator] = {}

    def start(self, model, optimizer, device: torch.device, world: int, extra: dict,
              generators: dict[str, torch.Generator] | None = None):
        """Returns (model wrapped for DDP, first step). ``generators``: the named RNGs of the
        training step (besides torch's global one) whose state a resumed run restores."""
        self.device, self.generators = device, dict(generators or {})
        self.config = run_config(self.args, {"world_size": world, "max_step": self.max_step,
                                             **extra})
        model = wrap_ddp(model, device, world)
        start = 0
        if self.args.resume:
            start, rng = load_train_state(self.args.resume, model, optimizer, self.config)
            if rng is not None and len(rng) == world:
                set_rng_state(rng[dist.rank()], device, self.generators, self.args.resume)
            elif dist.is_main():
                print(f"{self.desc}: WARNING: {self.args.resume} has no RNG states for "
                      f"{world} process(es); the resumed run will not repeat the interrupted "
                      f"one exactly", file=sys.stderr)
            if dist.is_main():
                print(f"{self.desc}: resuming {self.args.resume} at step {start}/{self.max_step}",
                      file=sys.stderr)
        self.logger = TrainLogger(self.args.tblog_dir or f"{self.session}_tb", self.max_step,
                                  start, self.global_batch, desc=self.desc)
        return model, start

    def check_loss(self, step: int, loss: torch.Tensor, parts: dict[str, float]) -> None:
        """RunError on a non-finite loss, before it reaches the weights. ``parts`` are the
        logged values of the global batch (all-reduced), so a non-finite loss on any process
        stops every process at the same step."""
        if not (torch.isfinite(loss.detach()).all()
                and all(math.isfinite(float(v)) for v in parts.values())):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
            raise RunError(f"{self.desc}: non-finite loss at step {step + 1} ({shown}): "
                           f"training diverged; nothing was saved after the last state "
                           f"(--save_every) (try a lower --lr)")

    def optimizer_step(self, step: int, model, optimizer, loss: torch.Tensor,
                       parts: dict[str, float]) -> None:
        """One training step after the forward pass: stop on a non-finite loss
        (:meth:`check_loss`), back-propagate ``loss``, step the optimiser, then log ``parts`` with
        the learning rate and save the periodic state (:meth:`after_step`)."""
        self.check_loss(step, loss, parts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.after_step(step, model, optimizer, {**parts, "lr": optimizer.param_groups[0]["lr"]})

    def accumulated_step(self, step: int, model, optimizer, batch: dict, loss_fn) -> None:
        """One optimiser step over ``--accum_steps`` micro-batches of this process's ``batch``.

        ``loss_fn(micro_batch) -> (loss, parts)`` as the stages' loss functions (the loss to
        back-propagate and the logged values of the micro-batch). With micro-batch sizes m_j
        (:func:`split_batch`, sum m_j = n) the gradient is that of sum_j (m_j / n) L_j, which is
        the full-batch loss L when L is a mean over images computed independently per image
        (frozen BN, no dropout randomness shared across images); the logged parts are averaged
        with the same weights. Under DDP the gradients are all-reduced on the last micro-batch
        only (``no_sync``). One micro-batch (the default) is exactly :meth:`optimizer_step`.
        """
        micro = split_batch(batch, getattr(self.args, "accum_steps", 1))
        if len(micro) == 1:
            loss, parts = loss_fn(micro[0][1])
            self.optimizer_step(step, model, optimizer, loss, parts)
            return
        optimizer.zero_grad(set_to_none=True)
        total: dict[str, float] = {}
        for j, (weight, mb) in enumerate(micro):
            last = j == len(micro) - 1
            sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") \
                else model.no_sync()
            with sync:
                loss, parts = loss_fn(mb)
                self.check_loss(step, loss, parts)
                (loss * weight).backward()
            for k, v in parts.items():
                total[k] = total.get(k, 0.0) + weight * float(v)
        optimizer.step()
        self.after_step(step, model, optimizer, {**total, "lr": optimizer.param_groups[0]["lr"]})

    def save_state(self, model, optimizer, step: int) -> None:
        rng = gather_rng_states(self.device, self.generators)  # collective: every rank
        if dist.is_main():
            save_train_state(f"{self.session}.state.pth", model, optimizer, step, self.config, rng)

    def after_step(self, step: int, model, optimizer, scalars: dict[str, float]) -> None:
        self.logger.log(step, scalars)
        every = self.args.save_every
        if every and (step + 1) % every == 0 and step + 1 < self.max_step:
            self.save_state(model, optimizer, step + 1)

    def finish(self, model, optimizer, step: int) -> None:
        self.logger.close()
        # The state first: a state newer than <session>.pth marks an unfinished run to resume.
        # The config after the weights it describes: a failed weight save keeps the old pair.
        self.save_state(model, optimizer, self.max_step)
        if dist.is_main():
            save_weights(model, f"{self.session}.pth")
            write_run_config(f"{self.session}.config.json", self.config)
            print(f"{self.desc}: saved {self.session}.pth ({self.max_step} steps, "
                  f"{self.logger.images_per_second(step):.1f} img/s)")
        dist.barrier()
        dist.cleanup()


def split_batch(batch: dict, parts: int) -> list[tuple[float, dict]]:
    """``batch`` (a collated dict: tensors and lists of n items) as ``parts`` micro-batches of
    sizes as equal as possible (n = 10 into 4 -> 3, 3, 2, 2); returns [(m_j / n, micro_batch)].
    Entries that are not per-item (other lengths, scalars) go to every micro-batch unchanged."""
    n = len(batch["image"])
    if parts > n:
        raise UserError(f"--accum_steps: {parts} micro-batches need at least {parts} images per "
                        f"process, this process has {n}")
    if parts == 1:
        return [(1.0, batch)]
    sizes = [n // parts + (j < n % parts) for j in range(parts)]
    out, start = [], 0
    for m in sizes:
        mb = {}
        for k, v in batch.items():
            per_item = (torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n) or \
                (isinstance(v, (list, tuple)) and len(v) == n)
            mb[k] = v[start:start + m] if per_item else v
        out.append((m / n, mb))
        start += m
    return out


def prepare_weak_stage(model, args: argparse.Namespace, desc: str, num_images: int):
    """The model and optimiser set-up stages 1 and 2 share (``add_weak_stage_args`` flags).

    ImageNet ``--weights`` into the trunk (or random initialisation), ``--no-dropout``,
    ``--channels_last``; max_step = ``--max_steps`` or the original's (N // batch) x epochs; the
    poly optimiser over the model's four parameter groups. Returns (model, optimizer, max_step).
    """
    from lib.models import disable_dropout
    from lib.optim import build_optimizer

    load_backbone_weights(model, args.weights, desc)
    if not args.dropout:
        disable_dropout(model)
    model = channels_last(model, args.channels_last)
    max_step = args.max_steps or steps_per_epoch(num_images, args.batch_size) * args.max_epoches
    optimizer = build_optimizer(args.optimizer, model.param_groups(), lr=args.lr,
                                weight_decay=args.wt_dec, max_step=max_step,
                                momentum=args.momentum, lr_mults=args.lr_mults)
    return model, optimizer, max_step


def load_backbone_weights(model, weights: str | None, desc: str) -> str | None:
    """ImageNet weights (``.params``/``.pth``) into the trunk; None/'none' = random init."""
    from lib.weights import load_imagenet_weights

    if weights and weights.lower() != "none":
        load_imagenet_weights(model, weights)
        return weights
    if dist.is_main():
        print(f"{desc}: no --weights given, training from random initialisation")
    return None
