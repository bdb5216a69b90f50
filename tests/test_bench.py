"""tools.bench.bench_pipeline's fp32-tolerance checks, lib.pool.BoundedPool, and the random walk under
autocast. No timing is asserted: the benchmarks' numbers are printed, never tested."""
import operator
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.pool import BoundedPool
from helpers import run  # noqa: E402  (tests/helpers.py)

pydensecrf = pytest.importorskip("pydensecrf.densecrf")

# aff: the radius-5 pairs need maps of more than 10 cells (> 80 px) to exist at all.
TINY = dict(width=0.0625, cam=(32, 2), aff=(96, 2), seg=(32, 2), infer_size=(88, 96))
CPU = torch.device("cpu")


@pytest.mark.parametrize("stage", ["cam", "aff"])
def test_channels_last_fp32_training_loss_equals_contiguous(stage):
    from tools.bench import bench_pipeline as bp

    crop, batch = TINY[stage]
    model, loss_fn, images = bp.train_case(stage, TINY["width"], crop, batch, CPU)
    ref, _ = bp.check_train(model, loss_fn, images, "fp32", CPU, None)
    loss, err = bp.check_train(model, loss_fn, images, "fp32_cl", CPU, ref)
    assert np.isfinite(ref) and ref > 0
    assert loss == pytest.approx(ref, rel=1e-5)
    assert err == pytest.approx(abs(loss - ref) / ref)


@pytest.mark.parametrize("stage", ["cam", "aff", "seg"])
def test_inference_modes_within_tolerance(stage):
    from tools.bench import bench_pipeline as bp

    rows = bp.bench_case("infer", stage, ["fp32", "fp32_cl", "bf16", "bf16_cl"], TINY, CPU, 1)
    assert [r["mode"] for r in rows] == ["fp32", "fp32_cl", "bf16", "bf16_cl"]
    for r in rows:
        assert r["check"] == "ok", r
        assert r["img_per_s"] > 0
    assert rows[0]["out_max_err"] == 0 and rows[0]["argmax_agree"] == 1
    assert rows[1]["out_max_err"] <= 1e-3
    assert 0 < rows[2]["out_max_err"] <= 5e-2  # bf16 does round: the check compares real numbers


def test_bf16_training_check_passes_and_a_tighter_tolerance_fails(monkeypatch):
    from tools.bench import bench_pipeline as bp

    rows = bp.bench_case("train", "cam", ["fp32", "bf16"], TINY, CPU, 1)
    assert [r["check"] for r in rows] == ["ok", "ok"]
    assert 0 < rows[1]["loss_rel_err"] <= bp.TOLERANCE["bf16"][0]
    # The check is live: with a tolerance below bf16's rounding the mode is rejected, not timed.
    monkeypatch.setitem(bp.TOLERANCE, "bf16", (1e-9, 1e-9, 1.0))
    rows = bp.bench_case("train", "cam", ["bf16"], TINY, CPU, 1)
    assert rows[0]["check"] == "FAIL" and "img_per_s" not in rows[0]


def test_bench_pipeline_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    run("-m", "tools.bench.bench_pipeline", "--backbone_width", "0.0625", "--cam_crop", "32", "--cam_batch", "2",
        "--aff_crop", "96", "--aff_batch", "2", "--seg_crop", "32", "--seg_batch", "2",
        "--infer_size", "88", "96", "--stages", "aff", "--modes", "fp32", "bf16", "--repeats", "1",
        "--device", "cpu", "--json", str(out), timeout=300)
    import json

    data = json.loads(out.read_text())
    assert {(r["kind"], r["mode"]) for r in data["rows"]} == {
        (k, m) for k in ("train", "infer") for m in ("fp32", "bf16")}
    assert all(r["check"] == "ok" for r in data["rows"])
    assert data["environment"]["device"] == "cpu"


def test_bounded_pool_keeps_submission_order_and_bounds_the_queue():
    jobs = [(i, i + 3) for i in range(9)]
    expected = [operator.mul(*j) for j in jobs]
    with BoundedPool(0) as serial:
        for j in jobs:
            serial.submit(operator.mul, *j)
    assert serial.results() == expected
    with BoundedPool(2, max_pending=1) as pool:
        for j in jobs:
            pool.submit(operator.mul, *j)
            assert len(pool._pending) <= 1
        assert pool.results() == expected


def test_bounded_pool_reraises_a_worker_error():
    with pytest.raises(ZeroDivisionError):
        with BoundedPool(1) as pool:
            pool.submit(operator.truediv, 1, 0)
            pool.results()
    assert pool._pool is None  # terminated, no worker left behind


def test_crf_pool_writes_the_same_maps_as_serial(tmp_path):
    from lib.io import load_crf
    from stage1_cam.infer_cam import _crf_job
    from tools.bench.bench_crf import synthetic_inputs

    image, keys, cams, _ = synthetic_inputs((40, 56), 2)
    for workers in (0, 2):
        with BoundedPool(workers) as pool:
            for i in range(3):
                pool.submit(_crf_job, (image, keys, cams[:, :, ::-1].copy() if i else cams,
                                       [(a, tmp_path / f"w{workers}" / f"{a}" / f"{i}.npz")
                                        for a in (2.0, 4.0)]))
    for a in (2.0, 4.0):
        for i in range(3):
            k0, p0 = load_crf(tmp_path / "w0" / f"{a}" / f"{i}.npz")
            k2, p2 = load_crf(tmp_path / "w2" / f"{a}" / f"{i}.npz")
            np.testing.assert_array_equal(k0, k2)
            np.testing.assert_array_equal(p0, p2)
    # alpha 2 and 4 differ, so the files are not all the same map
    assert not np.array_equal(load_crf(tmp_path / "w0" / "2.0" / "0.npz")[1],
                              load_crf(tmp_path / "w0" / "4.0" / "0.npz")[1])


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_random_walk_stays_fp32_under_bf16_autocast(method):
    from lib.random_walk import random_walk

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(16, 9, 11, generator=g) * 0.05
    cams = torch.rand(3, 9, 11, generator=g)
    ref = random_walk(cams, feats, method=method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = random_walk(cams, feats, method=method)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_gpu_check_script_is_valid_bash():
    script = Path(__file__).resolve().parents[1] / "tools" / "bench" / "gpu_check.sh"
    import subprocess

    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_train_cam_channels_last_flag_matches_contiguous(tmp_path):
    from helpers import make_tiny_voc

    from lib.weights import load_checkpoint

    voc = make_tiny_voc(tmp_path / "voc")
    states = []
    for flag in ([], ["--channels_last"]):
        session = tmp_path / f"cam{len(flag)}"
        run("-m", "stage1_cam.train_cam", "--data_root", str(voc), "--threads", "1",
            "--num_workers", "0", "--device", "cpu", "--weights", "none", "--backbone_width",
            "0.0625", "--crop_size", "64", "--resize_long", "64", "80", "--batch_size", "2",
            "--max_steps", "2", "--train_list", "train", "--session_name", str(session), *flag)
        states.append(load_checkpoint(f"{session}.pth"))
    a, b = states
    assert sorted(a) == sorted(b)
    init = build_init_state()
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], init[k])]
    assert moved  # the two steps changed the weights, so the comparison below means something
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def build_init_state():
    from lib import dist
    from lib.models import build_model

    dist.seed_everything(0, 0)
    return build_model("cam", num_classes=5, width=0.0625).state_dict()


@pytest.mark.parametrize("k", [0, 2])
def test_shared_lattice_crf_equals_one_crf_per_alpha(k):
    from lib.crf import cam_bg_fg_scores, crf_from_cam_alphas, dense_crf
    from tools.bench.bench_crf import synthetic_inputs

    image, keys, cams, _ = synthetic_inputs((30, 44), max(k, 1), seed=3)
    keys, cams = keys[:k], cams[:k]
    shared = crf_from_cam_alphas(image, keys, cams, [2.0, 4.0])
    for alpha, (ck, cp) in zip([2.0, 4.0], shared):
        np.testing.assert_array_equal(ck, np.concatenate([[0], keys + 1]))
        # the reference builds a fresh CRF object (its own lattices) for each alpha
        ref = dense_crf(image, cam_bg_fg_scores(cams, alpha)) if k else np.ones((1, 30, 44))
        np.testing.assert_array_equal(cp, ref)
    if k:
        assert not np.array_equal(shared[0][1], shared[1][1])


def test_time_budget_arithmetic():
    from argparse import Namespace

    from tools.bench import time_budget as tb

    args = Namespace(
        tflops_fp32=150.0, tflops_bf16=300.0, crf_s=2.0, final_crf_s=1.8, walk_s=0.02,
        eval_ips=300.0, cores=16)
    rows = {r["step"]: r for r in tb.budget(args, {})}
    # 10582 // 8 steps x 8 epochs x batch 8 images at 2.442 TFLOP / 150 TFLOP/s, in minutes
    assert rows["train_cam"]["images"] == 84608
    assert rows["train_cam"]["defaults_min"] == pytest.approx(84608 * 2.442 / 150 / 60)
    assert rows["train_cam"]["tuned_min"] == pytest.approx(84608 * 2.442 / 300 / 60)
    # the CRF pool bounds infer_cam: 10582 images x 2 core-s over the auto pool of 16 cores
    # (2 loaders + 14 CRF workers, lib/workers.py) in the defaults, 14 workers tuned
    assert rows["infer_cam_train_aug"]["bound"] == "CPU"
    assert rows["infer_cam_train_aug"]["defaults_min"] == pytest.approx(10582 * 2.0 / 14 / 60)
    assert rows["infer_cam_train_aug"]["4gpu_min"] == pytest.approx(10582 * 2.0 / (14 * 4) / 60)
    # a measured images/s replaces the estimate
    measured = tb.budget(args, {("train", "cam", "fp32"): 100.0})
    assert measured[0]["defaults_min"] == pytest.approx(84608 / 100.0 / 60)
    assert measured[0]["gpu_cost"] == "measured"
    total = rows.pop("total")
    assert total["defaults_min"] == pytest.approx(sum(r["defaults_min"] for r in rows.values()))
