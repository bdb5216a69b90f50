"""PolyOptimizer: group multipliers, the poly schedule, the momentum quirk, SGD arithmetic."""
import pytest
import torch
import torch.nn as nn

from lib.models import build_model
from lib.optim import PolyOptimizer, make_param_groups, poly_lr


def _params(*values):
    return [nn.Parameter(torch.tensor([v])) for v in values]


def test_groups_lr_and_weight_decay():
    ps = _params(1.0, 2.0, 3.0, 4.0)
    opt = PolyOptimizer([[ps[0]], [ps[1]], [ps[2]], [ps[3]]], lr=0.01, weight_decay=5e-4, max_step=10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert all(g["momentum"] == 5e-4 for g in opt.param_groups)      # the original's quirk
    opt2 = PolyOptimizer([[ps[0]], [], [], []], lr=0.01, weight_decay=5e-4, max_step=10, momentum=0.9)
    assert opt2.param_groups[0]["momentum"] == 0.9


def test_poly_schedule_by_hand():
    p = _params(0.0)[0]
    opt = PolyOptimizer([[p], [], [], []], lr=0.1, weight_decay=0.0, max_step=4, power=0.9)
    # (1 - t/4)^0.9 for t = 0..3: 1, 0.75^0.9, 0.5^0.9, 0.25^0.9; then frozen at t = 3's value.
    expected = [0.1, 0.1 * 0.7718895067, 0.1 * 0.5358867313, 0.1 * 0.2871745887, 0.1 * 0.2871745887]
    seen = []
    for _ in range(5):
        p.grad = torch.zeros(1)
        opt.step()
        seen.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[3]["lr"] == pytest.approx(20 * seen[-1])
    assert seen == pytest.approx(expected, rel=1e-9)
    assert opt.global_step == 5
    assert poly_lr(1.0, 2, 4) == pytest.approx(0.5358867313)


def test_sgd_update_with_weight_decay_and_momentum():
    w, b = _params(2.0, 3.0)
    opt = PolyOptimizer([[w], [b], [], []], lr=0.1, weight_decay=0.5, max_step=2, momentum=0.5)
    w.grad, b.grad = torch.tensor([1.0]), torch.tensor([1.0])
    opt.step()
    # step 0: lr 0.1 (w) / 0.2 (b); w: g = 1 + 0.5*2 = 2 -> 2 - 0.2 = 1.8; b: no decay -> 3 - 0.2 = 2.8
    assert w.item() == pytest.approx(1.8) and b.item() == pytest.approx(2.8)
    w.grad, b.grad = torch.tensor([1.0]), torch.tensor([1.0])
    opt.step()
    # step 1: lr 0.1 * 0.5^0.9; w: g = 1 + 0.9 = 1.9, buf = 0.5*2 + 1.9 = 2.9
    lr1 = 0.1 * 0.5 ** 0.9
    assert w.item() == pytest.approx(1.8 - lr1 * 2.9)
    assert b.item() == pytest.approx(2.8 - 2 * lr1 * (0.5 * 1 + 1))


def test_state_dict_keeps_global_step():
    p = _params(1.0)[0]
    opt = PolyOptimizer([[p], [], [], []], lr=0.1, weight_decay=0.0, max_step=10)
    for _ in range(3):
        p.grad = torch.ones(1)
        opt.step()
    opt2 = PolyOptimizer([[p], [], [], []], lr=0.1, weight_decay=0.0, max_step=10)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.global_step == 3 and opt2.current_lrs() == opt.current_lrs()


def test_make_param_groups_from_model():
    model = build_model("cam", num_classes=3, width=1 / 16)
    groups = make_param_groups(model, lr=0.01, weight_decay=5e-4)
    assert [g["lr_mult"] for g in groups] == [1, 2, 10, 20]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert groups[2]["lr"] == pytest.approx(0.1)
    assert len(groups[2]["params"]) == 4                              # fc8, f8_3, f8_4, f9
    opt = PolyOptimizer(model, lr=0.01, weight_decay=5e-4, max_step=5)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(len(g["params"]) for g in groups)
    with pytest.raises(ValueError):
        PolyOptimizer([[], [], [], []], lr=0.1, weight_decay=0.0, max_step=0)


def test_poly_adamw_follows_the_same_schedule_and_groups():
    from lib.optim import PolyAdamW, build_optimizer

    w = [torch.nn.Parameter(torch.ones(2)) for _ in range(4)]
    opt = build_optimizer("adamw", [[w[0]], [w[1]], [w[2]], [w[3]]], lr=0.1, weight_decay=0.01,
                          max_step=10)
    assert isinstance(opt, PolyAdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0, 0.01, 0.0]
    for _ in range(3):
        for p in w:
            p.grad = torch.ones_like(p)
        opt.step()
    # after 3 steps the next lr is lr0 (1 - 3/10)^0.9, per group
    assert opt.current_lrs() == pytest.approx([m * 0.1 * 0.7 ** 0.9 for m in (1, 2, 10, 20)])
    # the first Adam step moves every element by ~lr (sign of the gradient), not lr * grad
    assert float(w[2][0].detach()) < 1.0 - 0.9
    sd = opt.state_dict()
    opt2 = build_optimizer("adamw", [[w[0]], [w[1]], [w[2]], [w[3]]], lr=0.1, weight_decay=0.01,
                           max_step=10)
    opt2.load_state_dict(sd)
    assert opt2.global_step == 3
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("rmsprop", [[w[0]], [], [], []], 0.1, 0.0, 10)


def test_lr_mults_replace_the_group_multipliers():
    """--lr_mults W B NEW_W NEW_B: group lr = lr * mult for both optimisers; the default is the
    original's 1, 2, 10, 20; anything but four multipliers is refused."""
    from lib.optim import LR_MULT, build_optimizer

    assert tuple(LR_MULT) == (1.0, 2.0, 10.0, 20.0)
    w = [torch.nn.Parameter(torch.ones(1)) for _ in range(4)]
    for kind in ("sgd", "adamw"):
        opt = build_optimizer(kind, [[p] for p in w], lr=0.1, weight_decay=0.0, max_step=10,
                              lr_mults=(1, 1, 1, 1))
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1] * 4)
        opt = build_optimizer(kind, [[p] for p in w], lr=0.1, weight_decay=0.0, max_step=10,
                              lr_mults=(3, 0.5, 2, 4))
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.3, 0.05, 0.2, 0.4])
    with pytest.raises(ValueError, match="4 learning-rate multipliers"):
        make_param_groups([[p] for p in w], lr=0.1, lr_mults=(1, 1))


@pytest.mark.parametrize("module, base", [
    ("stage1_cam.train_cam", ["--data_root", "x"]),
    ("stage2_aff.train_aff", ["--data_root", "x", "--la_crf_dir", "a", "--ha_crf_dir", "b"]),
])
def test_lr_mults_flag_default_and_override(module, base):
    import importlib

    parse_args = importlib.import_module(module).parse_args
    assert parse_args(base).lr_mults == [1.0, 2.0, 10.0, 20.0]
    assert parse_args([*base, "--lr_mults", "1", "1", "1", "1"]).lr_mults == [1.0] * 4
