"""A bounded pool of CPU worker processes for per-image post-processing (the dense CRF).

The network runs in the main process; each image's CPU work (e.g. the CRF of stage 1) is handed
to ``workers`` spawned processes. Two things keep the pool fast and its memory bounded:

* every worker runs single-threaded (``OMP_NUM_THREADS=1`` and friends in its environment,
  ``torch.set_num_threads(1)``): W workers on W cores, no oversubscription by OpenMP/BLAS
  thread pools of the libraries the worker imports;
* at most ``max_pending`` jobs (default 2 per worker) are queued: a job carries its image and
  maps, and a producer faster than the workers would otherwise hold them all in memory.

``workers=0`` runs each job inline (same results, no processes). Results are in submission
order. On an exception inside the ``with`` block the workers are terminated.

    with BoundedPool(workers) as pool:
        for item in items:
            pool.submit(fn, job)          # fn: a module-level function (picklable)
        results = pool.results()          # waits for every job
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from typing import Any, Callable

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _single_thread() -> None:
    import sys

    if "torch" in sys.modules:  # the spawned child imported it with the main module
        sys.modules["torch"].set_num_threads(1)


class BoundedPool:
    def __init__(self, workers: int, max_pending: int | None = None):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        self.max_pending = max(1, max_pending if max_pending is not None else 2 * workers)
        self._pending: deque = deque()
        self._done: list[Any] = []
        self._pool = None
        if workers > 0:
            # spawn: a forked child of a process running torch/OpenMP threads can deadlock. The
            # children inherit os.environ as it is when they start, so set the thread variables
            # around the pool's creation only.
            saved = {k: os.environ.get(k) for k in _THREAD_VARS}
            os.environ.update({k: "1" for k in _THREAD_VARS})
            try:
                self._pool = mp.get_context("spawn").Pool(workers, initializer=_single_thread)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def submit(self, fn: Callable, *args) -> None:
        if self._pool is None:
            self._done.append(fn(*args))
            return
        self._pending.append(self._pool.apply_async(fn, args))
        while len(self._pending) > self.max_pending:
            self._done.append(self._pending.popleft().get())

    def results(self) -> list[Any]:
        """Wait for every submitted job; their return values in submission order."""
        while self._pending:
            self._done.append(self._pending.popleft().get())
        return self._done

    def close(self) -> None:
        self.results()
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def terminate(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "BoundedPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
