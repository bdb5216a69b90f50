"""--accum_steps (lib.training.TrainingRun.accumulated_step): N micro-batches, one optimiser step,
the same gradient as the whole batch where the loss is a per-image mean and BN is frozen."""
import argparse

import pytest
import torch
import torch.nn as nn

from lib.errors import UserError
from lib.training import TrainingRun, split_batch


class _Log:
    def __init__(self):
        self.scalars = []

    def log(self, step, scalars):
        self.scalars.append(dict(scalars))


def _run(accum_steps):
    run = TrainingRun(argparse.Namespace(accum_steps=accum_steps, save_every=0,
                                         session_name="unused"), "test", 6, 10)
    run.logger = _Log()
    return run


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _tiny_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).double()
    with torch.no_grad():  # BN statistics away from (0, 1), so freezing them matters
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    m.train()
    m[1].eval()  # frozen BN: the stage-1/2 regime
    return m


def test_split_batch_sizes_weights_and_passthrough():
    batch = {"image": torch.arange(10.0).view(10, 1), "id": [str(i) for i in range(10)],
             "meta": 7}
    micro = split_batch(batch, 4)
    assert [len(mb["image"]) for _, mb in micro] == [3, 3, 2, 2]
    assert [w for w, _ in micro] == [0.3, 0.3, 0.2, 0.2]
    assert torch.equal(torch.cat([mb["image"] for _, mb in micro]), batch["image"])
    assert sum((mb["id"] for _, mb in micro), []) == batch["id"]
    assert all(mb["meta"] == 7 for _, mb in micro)
    with pytest.raises(UserError, match="--accum_steps"):
        split_batch(batch, 11)


@pytest.mark.parametrize("accum", [2, 3])
def test_accumulated_gradient_equals_the_full_batch_gradient_float64(accum):
    """Hand-made reference: the gradient of the mean loss over the whole batch of 6 in one pass."""
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0, 1, 0])

    def loss_fn(mb):
        loss = nn.functional.cross_entropy(model(mb["image"]), mb["label"])
        return loss, {"loss": float(loss.detach())}

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ref_loss = nn.functional.cross_entropy(model(x), y)
    ref_loss.backward()
    ref = _grads(model)

    run = _run(accum)
    run.accumulated_step(0, model, opt, {"image": x, "label": y}, loss_fn)
    got = _grads(model)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-14)
    # the logged loss is the full batch's (weighted mean of the micro-batches' means)
    assert run.logger.scalars[0]["loss"] == pytest.approx(ref_loss.item(), rel=1e-12)


def test_bn_in_training_mode_is_where_accumulation_is_not_exact():
    """The documented exception: BN normalising with each micro-batch's own statistics."""
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    model = _tiny_model()
    model[1].train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    nn.functional.cross_entropy(model(x), y).backward()
    ref = _grads(model)
    _run(2).accumulated_step(0, model, opt, {"image": x, "label": y}, lambda mb: (
        nn.functional.cross_entropy(model(mb["image"]), mb["label"]), {}))
    got = _grads(model)
    assert max(float((got[k] - ref[k]).abs().max()) for k in ref) > 1e-6


def test_stage1_loss_accumulated_at_half_batch_equals_the_full_batch():
    """The real stage-1 loss (GAP + RV + ER + ECR + FSL; w = 0, so no importance draws) on a
    float64 CAM network with frozen BN and dropout off: --accum_steps 2 gives the full batch's
    gradient (to the FSL's float32 rounding)."""
    from lib.models import build_model, disable_dropout
    from stage1_cam.train_cam import parse_args, stage1_loss

    args = parse_args(["--data_root", "unused", "--loss_weight", "0", "--accum_steps", "2"])
    torch.manual_seed(0)
    model = build_model("cam", num_classes=5, width=0.0625).double()
    disable_dropout(model)
    model.train()  # the network keeps its BN frozen itself (frozen_bn, the paper's regime)
    g = torch.Generator().manual_seed(2)
    img = torch.randn(4, 3, 48, 48, dtype=torch.float64, generator=g)
    label = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 0, 0, 1]],
                         dtype=torch.float64)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    loss, parts = stage1_loss(model, img, label, args)
    loss.backward()
    ref = _grads(model)
    run = _run(2)
    run.accumulated_step(0, model, opt, {"image": img, "label": label},
                         lambda mb: stage1_loss(model, mb["image"], mb["label"], args))
    got = _grads(model)
    assert set(got) == set(ref) and ref
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7 * float(ref[k].abs().max()))
    assert run.logger.scalars[0]["total"] == pytest.approx(parts["total"], rel=1e-6)
