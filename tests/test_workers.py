"""``auto`` worker counts (lib/workers.py) from a mocked affinity mask and LOCAL_WORLD_SIZE."""
import argparse
import os

import pytest

from lib import workers


@pytest.fixture
def cores(monkeypatch):
    """Set the affinity mask to n cores (and optionally LOCAL_WORLD_SIZE)."""
    def set_cores(n, local_world=None):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
        if local_world is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    return set_cores


@pytest.mark.parametrize("n, train, infer_loader, crf", [
    (16, 8, 2, 14),   # a 16-core GPU box: 14 CRF workers, as tools.bench.bench_crf measured best
    (2, 1, 0, 2),     # the 2-core demo machine: the old defaults' CRF pool of 2
    (1, 0, 0, 1),     # one core: everything in the main process but one CRF worker
    (64, 8, 2, 62),
])
def test_auto_resolves_from_the_affinity_mask(cores, n, train, infer_loader, crf):
    cores(n)
    assert workers.available_cores() == n
    assert workers.train_loader_workers("auto") == train
    assert workers.infer_loader_workers("auto") == infer_loader
    assert workers.crf_workers("auto", workers.infer_loader_workers("auto")) == crf


def test_auto_is_per_process_under_torchrun(cores):
    cores(16, local_world=4)  # 4 processes on the node share 16 cores: 4 each
    assert workers.available_cores() == 4
    assert workers.train_loader_workers("auto") == 3
    assert workers.crf_workers("auto", workers.infer_loader_workers("auto")) == 3  # 4 - 1 loader
    cores(2, local_world=4)   # more processes than cores: each still gets one
    assert workers.available_cores() == 1


def test_the_affinity_mask_not_cpu_count(cores, monkeypatch):
    cores(3)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert workers.crf_workers("auto") == 3


def test_integers_are_taken_as_given(cores):
    cores(16)
    assert workers.train_loader_workers(0) == 0
    assert workers.infer_loader_workers(5) == 5
    assert workers.crf_workers(2, 7) == 2


def test_workers_arg_parses_auto_and_integers_and_refuses_the_rest():
    assert workers.workers_arg("auto") == "auto"
    assert workers.workers_arg("AUTO") == "auto"
    assert workers.workers_arg("3") == 3
    assert workers.workers_arg("-1") == -1  # left to the range check: "--num_workers: must be >= 0"
    for bad in ("two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            workers.workers_arg(bad)


def test_the_scripts_resolve_auto_by_default(cores):
    from stage1_cam import infer_cam, train_cam
    from stage3_seg import infer_seg

    cores(16)
    args = train_cam.parse_args(["--data_root", "d"])
    assert args.num_workers == 8
    args = infer_cam.parse_args(["--weights", "w", "--data_root", "d", "--out_cam", "o"])
    assert (args.num_workers, args.crf_workers) == (2, 14)
    args = infer_cam.parse_args(["--weights", "w", "--data_root", "d", "--out_cam", "o",
                                 "--num_workers", "1", "--crf_workers", "auto"])
    assert (args.num_workers, args.crf_workers) == (1, 15)
    args = infer_seg.parse_args(["--weights", "w", "--out_pred", "o"])
    assert args.crf_workers == 16
    cores(2)
    args = infer_seg.parse_args(["--weights", "w", "--out_pred", "o", "--workers", "auto"])
    assert args.crf_workers == 2
    with pytest.raises(SystemExit):
        train_cam.parse_args(["--data_root", "d", "--num_workers", "many"])
