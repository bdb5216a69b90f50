"""CUDA-only checks (skipped without a GPU; tools/bench/gpu_check.sh runs them on a GPU machine):
bf16 autocast and channels_last against fp32 on the GPU, the GPU random walk against the CPU's,
and DDP with two processes (NCCL over two GPUs, gloo on one)."""
import socket

import pytest
import torch

from helpers import make_tiny_voc, run  # noqa: E402  (tests/helpers.py)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SMALL = dict(width=0.25, cam=(64, 4), aff=(64, 4), seg=(64, 4), infer_size=(48, 64))


@cuda
@pytest.mark.parametrize("kind", ["train", "infer"])
@pytest.mark.parametrize("stage", ["cam", "aff", "seg"])
def test_bf16_and_channels_last_within_fp32_tolerance_on_cuda(kind, stage):
    from tools.bench import bench_pipeline as bp

    modes = ["fp32", "fp32_cl", "bf16", "bf16_cl"]
    rows = bp.bench_case(kind, stage, modes, SMALL, torch.device("cuda"), 1)
    assert [r["mode"] for r in rows] == modes
    for r in rows:
        assert r["check"] == "ok", r
        assert r["peak_mib"] > 0


@cuda
def test_random_walk_dense_on_cuda_equals_sparse_on_cpu():
    from lib.random_walk import random_walk

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 47, 63, generator=g) * 0.05
    cams = torch.rand(3, 47, 63, generator=g)
    cpu = random_walk(cams, feats, method="sparse")
    gpu = random_walk(cams.cuda(), feats.cuda(), method="dense")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6 * float(cpu.abs().max()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cuda
def test_ddp_two_processes_train_cam_on_cuda(tmp_path):
    """DDP smoke test: NCCL with 2+ GPUs, gloo when the two processes share one GPU
    (lib.dist.setup_distributed)."""
    from lib.weights import load_checkpoint

    voc = make_tiny_voc(tmp_path / "voc")
    session = tmp_path / "cam"
    run("-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "stage1_cam.train_cam", "--data_root", str(voc), "--device", "cuda",
        "--num_workers", "0", "--weights", "none", "--backbone_width", "0.0625",
        "--crop_size", "64", "--resize_long", "64", "80", "--batch_size", "4", "--max_steps", "2",
        "--train_list", "train", "--session_name", str(session), "--amp", timeout=300)
    state = load_checkpoint(f"{session}.pth")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
