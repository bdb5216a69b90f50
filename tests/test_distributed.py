"""K processes compute what one process computes on the whole batch (lib.dist, lib.training).

* the global batch is split 3, 3, 2, 2 (10 over 4) and the union of the ranks' shares of every
  step is the single-process batch, in the single-process order;
* one step of each training (stage 1, 2, 3) on 2 and 3 gloo processes gives the loss and the
  gradients of one process on the same global batch (tests/dist_equivalence.py);
* the FSL's colour input is the original's (resize with align_corners=True, then de-normalise).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dist_equivalence
from lib import dist
from lib.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from lib.errors import UserError
from lib.losses.feature_similarity import feature_similarity_loss_dense, fsl_image
from lib.training import GlobalBatchSampler, make_loader

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_shard_sizes_split_the_global_batch_as_evenly_as_possible():
    assert dist.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert dist.shard_sizes(8, 8) == [1] * 8
    assert dist.shard_sizes(10, 3) == [4, 3, 3]
    assert dist.shard_sizes(10, 1) == [10]
    assert [dist.shard_bounds(10, r, 4) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(UserError, match="cannot be split over 4"):
        dist.shard_sizes(3, 4)


def _epochs(loader_and_sampler, n_epochs):
    loader, sampler = loader_and_sampler
    out = []
    for e in range(n_epochs):
        sampler.set_epoch(e)
        out.append([b.tolist() for b in loader])
    return out


@pytest.mark.parametrize("n_items,batch", [(23, 10), (20, 5), (9, 8)])
def test_union_of_the_ranks_batches_is_the_single_process_batch(n_items, batch):
    data = torch.arange(n_items)
    one = _epochs(make_loader(data, batch, 0, 1, seed=7, num_workers=0), 3)
    assert all(len(e) == n_items // batch and all(len(b) == batch for b in e) for e in one)
    assert one[0] != one[1]  # a new order every epoch
    for world in (2, 3, 4, 8):
        if world > batch:
            continue
        per_rank = [_epochs(make_loader(data, batch, r, world, seed=7, num_workers=0), 3)
                    for r in range(world)]
        for e in range(3):
            for step, want in enumerate(one[e]):
                shares = [per_rank[r][e][step] for r in range(world)]
                assert [len(s) for s in shares] == dist.shard_sizes(batch, world)
                assert sum(shares, []) == want


def test_batch_order_is_a_function_of_seed_and_epoch_and_a_resume_skips_without_loading():
    """Epoch e's order is randperm(n) of a generator seeded with seed + e, whatever epochs came
    before (a resumed run sees the interrupted run's order); set_epoch(e, skip=k) starts at the
    k-th batch and never hands the skipped indices to the dataset."""
    data = torch.arange(23)
    loader, sampler = make_loader(data, 4, 0, 1, seed=3, num_workers=0)
    assert isinstance(sampler, GlobalBatchSampler) and len(loader) == 5
    for e in (2, 0, 1):
        sampler.set_epoch(e)
        perm = torch.randperm(23, generator=torch.Generator().manual_seed(3 + e)).tolist()
        assert [b.tolist() for b in loader] == [perm[i:i + 4] for i in range(0, 20, 4)]
    seen = []

    class Recording(torch.utils.data.Dataset):
        def __len__(self):
            return 23

        def __getitem__(self, i):
            seen.append(i)
            return i

    loader, sampler = make_loader(Recording(), 4, 0, 1, seed=3, num_workers=0)
    sampler.set_epoch(1, skip=3)
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(4)).tolist()
    assert [b.tolist() for b in loader] == [perm[12:16], perm[16:20]]
    assert seen == perm[12:20]


def test_one_step_of_each_training_on_2_and_3_processes_equals_1_process(tmp_path):
    ref = dist_equivalence.run_world(1, tmp_path)
    for world in (2, 3):
        res = dist_equivalence.run_world(world, tmp_path)
        for name in ("cam", "aff", "seg"):
            loss, grad = dist_equivalence.max_rel_diff(res[name], ref[name])
            print(f"{name}: {world} vs 1 processes: loss {loss:.1e}, gradients {grad:.1e}")
            assert loss < 1e-5 and grad < 1e-4, (name, world, loss, grad)
            for k, v in ref[name]["parts"].items():  # every logged value is the global one
                assert res[name]["parts"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (name, k)


def test_per_process_means_would_not_be_the_global_loss():
    """The equivalence above is not automatic: with the shares 3 and 2 of the test batch, the
    mean of the two processes' own means differs from the global mean (the loss of the
    previous, per-process normalisation)."""
    batch = dist_equivalence._batches()["seg"]
    valid = (batch["label"] != 255).flatten(1).sum(1).double()
    per_image = valid * torch.linspace(1.0, 2.0, len(valid), dtype=torch.float64)  # any loss sums
    lo, hi = dist.shard_bounds(len(valid), 0, 2)[1], len(valid)
    global_mean = per_image.sum() / valid.sum()
    mean_of_means = 0.5 * (per_image[:lo].sum() / valid[:lo].sum()
                           + per_image[lo:hi].sum() / valid[lo:hi].sum())
    assert abs(float(mean_of_means / global_mean) - 1) > 1e-2


# --------------------------------------------------------------------------- FSL input


def test_fsl_image_is_the_normalised_crop_resized_with_align_corners_then_denormalised():
    """4 x 4 -> 3 x 3 with align_corners=True samples rows/columns 0, 1.5, 3: corners and edge
    midpoints are pixels or two-pixel means, the centre the mean of the 4 central pixels."""
    x01 = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    got = fsl_image((x01 - MEAN) / STD, (3, 3))[0]
    x = x01[0]
    mid = lambda a, b: 0.5 * (a + b)  # noqa: E731
    want = torch.stack([
        torch.stack([x[:, 0, 0], mid(x[:, 0, 1], x[:, 0, 2]), x[:, 0, 3]], -1),
        torch.stack([mid(x[:, 1, 0], x[:, 2, 0]), x[:, 1:3, 1:3].mean((1, 2)),
                     mid(x[:, 1, 3], x[:, 2, 3])], -1),
        torch.stack([x[:, 3, 0], mid(x[:, 3, 1], x[:, 3, 2]), x[:, 3, 3]], -1)], -2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # --no-fsl_align_corners: cell centres, 4 -> 2 is the mean of each 2 x 2 block.
    half = fsl_image((x01 - MEAN) / STD, (2, 2), align_corners=False)[0]
    torch.testing.assert_close(half, F.avg_pool2d(x01, 2)[0], rtol=0, atol=1e-6)


def _original_fsl(img, cam):
    """The original's FSL input: normalised crop resized (align_corners=True), de-normalised."""
    small = F.interpolate(img, size=cam.shape[-2:], mode="bilinear", align_corners=True)
    return feature_similarity_loss_dense(small * STD + MEAN, cam.float()).item()


def test_stage1_fsl_term_is_the_originals():
    from lib.models import build_model
    from stage1_cam.train_cam import parse_args, stage1_loss

    torch.manual_seed(0)
    model = build_model("cam", num_classes=4, width=0.0625).eval()
    img = (torch.rand(2, 3, 64, 64) - MEAN) / STD
    label = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    args = parse_args(["--data_root", "unused", "--loss_weight", "0"])
    _, parts = stage1_loss(model, img, label, args)
    with torch.no_grad():
        want = _original_fsl(img, model(img).cam)
    assert parts["fsl"] == pytest.approx(want, rel=1e-4)


def test_stage3_fsl_term_is_the_originals():
    from lib.models import build_model
    from stage3_seg.train_seg import seg_loss

    torch.manual_seed(0)
    model = build_model("deeplabv1", num_classes=3, width=0.0625).eval()
    img = (torch.rand(2, 3, 48, 48) - MEAN) / STD
    label = torch.randint(0, 4, (2, 48, 48))
    label[label == 3] = 255
    _, parts, logits = seg_loss(model, img, label, 0.5, 2.5, 5.0)
    with torch.no_grad():
        _, cam = model(img)
        want = _original_fsl(img, cam)
        ce = F.cross_entropy(logits.float(), label, ignore_index=255).item()
    assert parts["fsl"] == pytest.approx(want, rel=1e-4)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert parts["total"] == pytest.approx(ce + 0.5 * want, rel=1e-5)
