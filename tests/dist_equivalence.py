"""One training step of each stage on a fixed global batch, on 1 process or K gloo processes.

Used by tests/test_distributed.py (and runnable by hand: ``python tests/dist_equivalence.py``
prints the measured differences). Each stage's step goes through the stage script's own loss
function (``stage1_loss``, ``pair_loss``, ``seg_loss``) and DDP (``lib.training.wrap_ddp``); rank
r gets the slice ``lib.dist.shard_bounds`` gives it of the same global batch. Randomness that
would differ between 1 and K processes is switched off, so the comparison isolates the loss
normalisation: dropout p = 0 (``disable_dropout``), stage 1 with ``--loss_weight 0`` (importance
sampling draws its pixels from each process's own generator), stage-3 BatchNorm in eval mode
(per-process batch statistics are the original's DataParallel behaviour, not a global quantity;
SyncBatchNorm needs CUDA). Stages 1-2 keep the original's frozen BatchNorm.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GLOBAL_BATCH = 5  # uneven over 2 (3, 2) and 3 (2, 2, 1) processes
WIDTH = 0.03125
NUM_CLASSES = 4


def _batches() -> dict[str, dict[str, torch.Tensor]]:
    """The global batch of each stage (identical on every process)."""
    g = torch.Generator().manual_seed(1234)
    n = GLOBAL_BATCH
    # Images: [0, 1] colours, normalised as the datasets do.
    from lib.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def image(size):
        return (torch.rand(n, 3, size, size, generator=g) - mean) / std

    cls = (torch.rand(n, NUM_CLASSES, generator=g) < 0.5).float()
    cls[:, 0] = 1.0  # every image has a foreground class
    # Stage 2: 12 x 12 stride-8 label maps of blocks (0 bg, 1..3 classes, 255 void), with
    # different pair counts per image.
    aff = torch.randint(0, 4, (n, 3, 3), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    aff[torch.rand(aff.shape, generator=g) < 0.1] = 255
    seg = torch.randint(0, NUM_CLASSES, (n, 48, 48), generator=g)
    seg[torch.rand(seg.shape, generator=g) < torch.linspace(0.05, 0.6, n).view(n, 1, 1)] = 255
    return {"cam": {"image": image(48), "label": cls},
            "aff": {"image": image(96), "label": aff},
            "seg": {"image": image(48), "label": seg}}


def _model(name: str):
    from lib.models import build_model, disable_dropout

    torch.manual_seed(0)
    if name == "cam":
        model = build_model("cam", num_classes=NUM_CLASSES, width=WIDTH, freeze=True)
    elif name == "aff":
        model = build_model("aff", width=WIDTH, freeze=True)
    else:
        model = build_model("deeplabv1", num_classes=NUM_CLASSES, width=WIDTH)
    disable_dropout(model)
    model.train()
    if name == "seg":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def one_step(name: str, rank: int, world: int) -> dict:
    """Loss (logged, global) and parameter gradients of one step of stage ``name`` on this
    process's share of the global batch."""
    from lib import dist
    from lib.training import wrap_ddp

    batch = _batches()[name]
    start, stop = dist.shard_bounds(GLOBAL_BATCH, rank, world)
    img, label = batch["image"][start:stop], batch["label"][start:stop]
    model = wrap_ddp(_model(name), torch.device("cpu"), world)
    if name == "cam":
        from stage1_cam.train_cam import parse_args, stage1_loss

        args = parse_args(["--data_root", "unused", "--loss_weight", "0", "--view2_scale", "0.5"])
        loss, parts = stage1_loss(model, img, label, args)
    elif name == "aff":
        from lib.affinity import extract_pair_labels
        from stage2_aff.train_aff import RADIUS, pair_loss

        bg, fg, neg = extract_pair_labels(label, RADIUS)
        loss, parts = pair_loss(model(img), bg, fg, neg)
        parts["total"] = parts["loss"]
    else:
        from stage3_seg.train_seg import seg_loss

        # FSL weight 50 (0.5 in the configs): at random init the FSL gradient is ~1e-4 of the
        # CE one; the larger weight makes a wrong FSL normalisation visible.
        loss, parts, _ = seg_loss(model, img, label.long(), 50.0, 2.5, 5.0)
    loss.backward()
    bare = dist.unwrap(model)
    grads = {k: p.grad.detach().clone() for k, p in bare.named_parameters() if p.grad is not None}
    return {"total": parts["total"], "parts": parts, "grads": grads}


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    try:
        results = {name: one_step(name, rank, world) for name in ("cam", "aff", "seg")}
        if rank == 0:
            torch.save(results, out)
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def run_world(world: int, workdir: Path) -> dict:
    """Results of rank 0 of ``world`` gloo processes (1: this process, no process group)."""
    if world == 1:
        return {name: one_step(name, 0, 1) for name in ("cam", "aff", "seg")}
    import torch.multiprocessing as mp

    out = workdir / f"world{world}.pt"
    init = workdir / f"init{world}"
    mp.spawn(_worker, args=(world, str(init), str(out)), nprocs=world, join=True)
    return torch.load(out, weights_only=True)


def max_rel_diff(a: dict, b: dict) -> tuple[float, float]:
    """(relative loss difference, max over parameters of max|g_a - g_b| / max|g_b|)."""
    loss = abs(a["total"] - b["total"]) / abs(b["total"])
    assert a["grads"].keys() == b["grads"].keys()
    grad = max(float((a["grads"][k] - b["grads"][k]).abs().max() / b["grads"][k].abs().max().clamp_min(1e-30))
               for k in b["grads"])
    return loss, grad


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ref = run_world(1, Path(d))
        for k in (2, 3):
            res = run_world(k, Path(d))
            for name in ("cam", "aff", "seg"):
                lo, gr = max_rel_diff(res[name], ref[name])
                print(f"{name}: {k} vs 1 process(es): loss rel diff {lo:.2e}, grad max rel diff {gr:.2e}")
