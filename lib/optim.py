"""Poly learning-rate SGD with the original's four parameter groups (docs/METHOD.md sections 3, 5, 6).

Groups (from a model's ``param_groups()``):

    ====  ==========================  ========  ============
    #     parameters                  lr        weight decay
    ====  ==========================  ========  ============
    0     pretrained conv weights     lr        wd
    1     pretrained conv biases      2 lr      0
    2     new layers' weights         10 lr     wd
    3     new layers' biases          20 lr     0
    ====  ==========================  ========  ============

At optimiser step t (0-based; the t-th call of :meth:`PolyOptimizer.step`) every group uses
``lr_g(t) = lr_g(0) * (1 - t / max_step) ** power`` while ``t < max_step``; later steps keep the
last value (as the original).

Momentum quirk: PSA/SEAM/ICAM's ``PolyOptimizer`` calls ``SGD(params, lr, weight_decay)``, which
puts the weight decay into SGD's *momentum* argument, so stages 1 and 2 train with momentum 5e-4
(effectively none). ``momentum=None`` (the default) reproduces that (momentum = weight_decay);
stage scripts expose ``--momentum`` to override it. Stage 3 (SEAM's segmentation codebase) uses
plain SGD with momentum 0.9 and ``lr_init * (1 - itr / (max_itr + 1)) ** 0.9``, i.e. this class
with ``momentum=0.9`` and ``max_step = iterations + 1``.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = ["LR_MULT", "DECAY", "make_param_groups", "PolyOptimizer", "PolyAdamW", "build_optimizer",
           "poly_lr"]

LR_MULT = (1.0, 2.0, 10.0, 20.0)
DECAY = (True, False, True, False)


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step/max_step) ** power`` for ``step < max_step``, else the value at
    ``max_step - 1`` (the original stops updating the lr)."""
    step = min(step, max_step - 1)
    return base_lr * (1.0 - step / max_step) ** power


def make_param_groups(model_or_groups: nn.Module | Iterable[Iterable[nn.Parameter]],
                      lr: float | None = None,
                      weight_decay: float | None = None,
                      lr_mults: Sequence[float] = LR_MULT) -> list[dict[str, Any]]:
    """The four optimiser group dicts of a model (its ``param_groups()``) or of 4 param lists.

    Each dict has ``params``, ``lr_mult`` (``lr_mults``, default 1, 2, 10, 20) and ``decay``
    (True, False, True, False); with ``lr`` / ``weight_decay`` given it also carries
    ``lr = lr * lr_mult`` and ``weight_decay = weight_decay if decay else 0``.
    """
    groups = model_or_groups.param_groups() if isinstance(model_or_groups, nn.Module) \
        else model_or_groups
    groups = [list(g) for g in groups]
    if len(groups) != 4:
        raise ValueError(f"expected 4 parameter groups, got {len(groups)}")
    if len(lr_mults) != 4:
        raise ValueError(f"expected 4 learning-rate multipliers, got {len(lr_mults)}")
    out = []
    for params, mult, decay in zip(groups, lr_mults, DECAY):
        d: dict[str, Any] = {"params": params, "lr_mult": mult, "decay": decay}
        if lr is not None:
            d["lr"] = lr * mult
        if weight_decay is not None:
            d["weight_decay"] = weight_decay if decay else 0.0
        out.append(d)
    return out


def _build_groups(params_groups, lr: float, weight_decay: float,
                  lr_mults: Sequence[float] = LR_MULT) -> list[dict[str, Any]]:
    """Normalise a model / 4 lists / group dicts into group dicts with lr and weight decay set
    (``lr_mults`` applies to a model or 4 lists; group dicts keep their own ``lr_mult``)."""
    if isinstance(params_groups, nn.Module):
        params_groups = params_groups.param_groups()
    params_groups = list(params_groups)
    if params_groups and not isinstance(params_groups[0], dict):
        params_groups = make_param_groups(params_groups, lr_mults=lr_mults)
    groups = []
    for g in params_groups:
        g = dict(g)
        mult = g.setdefault("lr_mult", 1.0)
        decay = g.setdefault("decay", True)
        g.setdefault("lr", lr * mult)
        g.setdefault("weight_decay", weight_decay if decay else 0.0)
        g["params"] = list(g["params"])
        groups.append(g)
    return groups


class _PolySchedule:
    """Poly schedule over the group learning rates, shared by the SGD and AdamW variants."""

    max_step: int
    power: float
    global_step: int

    def _init_schedule(self, max_step: int, power: float) -> None:
        if max_step < 1:
            raise ValueError(f"{type(self).__name__}: max_step must be >= 1, got {max_step}")
        self.max_step = int(max_step)
        self.power = float(power)
        self.global_step = 0

    def _record_initial_lr(self) -> None:
        for g in self.param_groups:
            g["initial_lr"] = g["lr"]

    def current_lrs(self) -> list[float]:
        """Learning rates the next :meth:`step` will use, one per group."""
        return [poly_lr(g["initial_lr"], self.global_step, self.max_step, self.power)
                for g in self.param_groups]

    def step(self, closure=None):
        """Set every group's lr for step ``global_step``, take a step, advance the counter."""
        if self.global_step < self.max_step:
            for g, lr in zip(self.param_groups, self.current_lrs()):
                g["lr"] = lr
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["global_step"] = self.global_step
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.global_step = int(state_dict.pop("global_step", 0))
        super().load_state_dict(state_dict)


class PolyOptimizer(_PolySchedule, torch.optim.SGD):
    """SGD whose group learning rates follow the poly schedule of the module docstring.

    Args:
        params_groups: a model (uses its ``param_groups()``), 4 lists of parameters, or group
            dicts (from :func:`make_param_groups` or hand-made; a dict without ``lr`` gets
            ``lr * lr_mult``, one without ``weight_decay`` gets ``weight_decay`` if ``decay``
            else 0).
        lr: base learning rate (group 0).
        weight_decay: L2 weight decay of the decayed groups.
        max_step: number of scheduled steps.
        momentum: SGD momentum; ``None`` -> ``weight_decay`` (the original's quirk).
        power: poly exponent (0.9).
        lr_mults: learning-rate multipliers of the four groups (the original's 1, 2, 10, 20).
    """

    def __init__(self, params_groups, lr: float, weight_decay: float, max_step: int,
                 momentum: float | None = None, power: float = 0.9,
                 lr_mults: Sequence[float] = LR_MULT):
        self._init_schedule(max_step, power)
        torch.optim.SGD.__init__(self, _build_groups(params_groups, lr, weight_decay, lr_mults),
                                 lr=lr,
                                 momentum=weight_decay if momentum is None else momentum)
        self._record_initial_lr()


class PolyAdamW(_PolySchedule, torch.optim.AdamW):
    """AdamW with the same four groups and poly schedule (not in the original).

    For training from random initialisation (the CPU demo has no ImageNet weights), where the
    original's near-momentum-free SGD learns too slowly; selected by ``--optimizer adamw``.
    """

    def __init__(self, params_groups, lr: float, weight_decay: float, max_step: int,
                 power: float = 0.9, lr_mults: Sequence[float] = LR_MULT):
        self._init_schedule(max_step, power)
        torch.optim.AdamW.__init__(self, _build_groups(params_groups, lr, weight_decay, lr_mults),
                                   lr=lr)
        self._record_initial_lr()


def build_optimizer(kind: str, params_groups, lr: float, weight_decay: float, max_step: int,
                    momentum: float | None = None, power: float = 0.9,
                    lr_mults: Sequence[float] = LR_MULT):
    """``--optimizer`` of the stage scripts: 'sgd' (the original, :class:`PolyOptimizer`) or
    'adamw' (:class:`PolyAdamW`; ``momentum`` is ignored); ``--lr_mults`` gives ``lr_mults``."""
    if kind == "sgd":
        return PolyOptimizer(params_groups, lr, weight_decay, max_step, momentum, power, lr_mults)
    if kind == "adamw":
        return PolyAdamW(params_groups, lr, weight_decay, max_step, power, lr_mults)
    raise ValueError(f"unknown optimizer {kind!r}; expected 'sgd' or 'adamw'")
