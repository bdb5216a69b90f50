"""Inference plumbing shared by the three stages (the counterpart of ``lib.training.TrainingRun``).

Each ``infer_*`` script keeps its own per-image computation; everything here is stage-agnostic:

* sharding: under ``torchrun`` each process takes every ``world``-th id (:func:`lib.dist.shard`,
  balanced), so the K processes together cover the list once; a plain run is a world of one;
* skipping: an image whose outputs all exist is not recomputed unless ``--overwrite``
  (outputs are written atomically, so an existing file is a finished one);
* strict loading: the checkpoint must fit the model exactly; a missing, corrupt or mismatched
  file is one ``UserError`` naming it (``lib.weights.load_weights_into``);
* the bounded CPU worker pool of the per-image post-processing (``lib.pool.BoundedPool``);
* progress: rank 0 shows a tqdm bar when stderr is a terminal, else (a log file) a plain line
  every ``plain_every_s`` seconds and at the end.

    run = InferenceRun("infer_x", args.device, args.threads)
    todo = run.select(ids, lambda i: [out / f"{i}.png"], args.overwrite)
    if todo:
        model = run.load_model(build_model(...), args.weights)
        with run.pool(workers) as pool:
            for item in run.progress(run.loader(dataset, num_workers), len(todo)):
                ...
    run.finish()
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lib import dist
from lib.checkpoint import CheckpointError
from lib.errors import UserError, check_writable_dir
from lib.pool import BoundedPool
from lib.weights import load_weights_into


def pending_ids(ids: Sequence[str], outputs: Callable[[str], Sequence[Path]],
                overwrite: bool = False) -> list[str]:
    """The ids of ``ids`` that still need work: all of them with ``overwrite``, else those with
    an output file that does not exist yet."""
    if overwrite:
        return list(ids)
    return [i for i in ids if not all(Path(p).is_file() for p in outputs(i))]


def load_inference_weights(model: torch.nn.Module, weights: str | Path,
                           built_with: str | None = None) -> torch.nn.Module:
    """Strict load of a trained checkpoint into ``model``; every failure is a UserError naming
    the file (``built_with``, e.g. the class count and width the model was built with, is added
    to a mismatch, so the user sees both sides)."""
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"{path}: --weights: checkpoint not found")
    try:
        return load_weights_into(model, path)
    except CheckpointError as e:
        if built_with:
            raise CheckpointError(f"{e} ({built_with})") from None
        raise


def _as_is(item):
    """collate_fn of the one-image loader: the dataset's item untouched (no tensor conversion)."""
    return item


class InferenceRun:
    """The bookkeeping every stage's inference shares around its own per-image computation
    (module docstring). ``rank``, ``world`` and ``device`` come from ``lib.dist``."""

    plain_every_s = 30.0

    def __init__(self, desc: str, device: str = "auto", threads: int = 0):
        self.desc = desc
        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world, self.device = dist.setup_distributed(device)

    def select(self, ids: Sequence[str], outputs: Callable[[str], Sequence[Path]],
               overwrite: bool = False) -> list[str]:
        """This process's share of ``ids`` that still needs work (:func:`pending_ids`).

        First proves every output folder writable (from ``outputs(ids[0])``), so an unwritable
        output fails before any work; then prints how many of the share are already done.
        """
        folders = dict.fromkeys(Path(p).parent for p in outputs(ids[0])) if ids else {}
        for folder in folders:
            check_writable_dir(folder)
        mine = dist.shard(list(ids), self.rank, self.world)
        todo = pending_ids(mine, outputs, overwrite)
        if dist.is_main():
            print(f"{self.desc}: {len(mine) - len(todo)} of {len(mine)} images already done"
                  + (f" (rank 0 of {self.world})" if self.world > 1 else ""), flush=True)
        return todo

    def load_model(self, model: torch.nn.Module, weights: str | Path,
                   built_with: str | None = None) -> torch.nn.Module:
        """``model`` with the checkpoint loaded strictly (:func:`load_inference_weights`), on
        the run's device, in eval mode."""
        return load_inference_weights(model, weights, built_with).to(self.device).eval()

    @staticmethod
    def loader(dataset, num_workers: int) -> DataLoader:
        """One item at a time, as the dataset returns it, read by ``num_workers`` processes
        (0: in the main process) ahead of the network."""
        return DataLoader(dataset, batch_size=None, collate_fn=_as_is, num_workers=num_workers)

    @staticmethod
    def pool(workers: int, max_pending: int | None = None) -> BoundedPool:
        """The CPU worker pool of the per-image post-processing (``lib.pool``); ``max_pending``
        bounds the jobs (each holds an image and its maps) waiting for a worker."""
        return BoundedPool(workers, max_pending)

    def progress(self, items: Iterable, total: int) -> Iterator:
        """Yield ``items``, showing the progress on rank 0 (module docstring)."""
        from tqdm import tqdm

        main, tty = dist.is_main(), sys.stderr.isatty()
        t0 = last = time.time()
        done = 0
        with tqdm(total=total, desc=self.desc, disable=not (main and tty), dynamic_ncols=True) as bar:
            for item in items:
                yield item
                done += 1
                bar.update(1)
                now = time.time()
                if main and not tty and (done == total or now - last >= self.plain_every_s):
                    last = now
                    rate = done / max(1e-9, now - t0)
                    print(f"{self.desc}: {done}/{total} images ({rate:.2f} img/s)",
                          file=sys.stderr, flush=True)

    def finish(self) -> None:
        """Wait for every process, then leave the process group."""
        dist.barrier()
        dist.cleanup()

