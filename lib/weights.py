"""Loading ImageNet weights into the ResNet-38 trunk, and checkpoints (never unpickling)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from lib.checkpoint import check_fits, load_verified
from lib.errors import UserError
from lib.mxnet_params import load_mxnet_as_torch

__all__ = ["LoadReport", "load_imagenet_weights", "load_checkpoint", "load_weights_into",
           "strip_module_prefix"]

log = logging.getLogger(__name__)


class LoadReport(NamedTuple):
    """Keys of a weight load: ``loaded`` (copied into the trunk), ``missing`` (trunk tensors the
    file lacks, ``num_batches_tracked`` excepted) and ``unexpected`` (file keys the trunk lacks)."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a leading ``module.`` (DataParallel / DDP) from every key that has it."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _check_state_dict(obj, path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UserError(f"{path}: not a state_dict (expected a dict of str -> Tensor, "
                         f"got {type(obj).__name__})")
    return obj


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True, map_location='cpu')`` -> state_dict with any
    ``module.`` prefix removed (a ``{'state_dict': ...}`` / ``{'model': ...}`` wrapper is
    unwrapped). FileNotFoundError when absent; ValueError when not a state_dict, or unreadable
    (one line saying what the file is instead: truncated, an HTML page, MXNet weights, ...);
    :class:`lib.checkpoint.CheckpointError` (a ValueError) when its ``.sha256`` sidecar exists
    and does not match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return strip_module_prefix(_check_state_dict(load_verified(path), path))


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a trained checkpoint into ``model`` (strict); one error names the file and every key
    or shape that does not fit (another class count or width), instead of PyTorch's dump."""
    state = load_checkpoint(path)
    check_fits(state, model.state_dict(), path)
    model.load_state_dict(state, strict=False)  # check_fits allowed only num_batches_tracked
    return model


def _trunk_of(module: nn.Module) -> nn.Module:
    return getattr(module, "trunk", module)


def load_imagenet_weights(module: nn.Module, path: str | os.PathLike,
                          strict: bool = True) -> LoadReport:
    """Load ResNet-38 ImageNet weights (MXNet ``.params`` or converted ``.pth``) into the trunk.

    ``module`` is a :class:`lib.backbones.ResNet38d`, or any model with a ``trunk`` attribute
    (``CAMNet``/``AffinityNet``: the model itself, ``DeepLabV1``: ``model.backbone``). Heads are
    left untouched (they are new layers). Every file key must name a trunk tensor of the same
    shape: a shape mismatch (e.g. weights of another ``width``) always raises ValueError naming
    the key and both shapes. With ``strict`` (default) missing trunk tensors (other than
    ``num_batches_tracked``) or unexpected file keys also raise ValueError; otherwise they are
    logged and reported. Returns a :class:`LoadReport`.
    """
    path = Path(path)
    if path.suffix == ".params":
        state = load_mxnet_as_torch(path)
    else:
        state = load_checkpoint(path)
    trunk = _trunk_of(module)
    own = trunk.state_dict()
    trunk_keys = set(own)
    if trunk is module and hasattr(module, "from_scratch_layers"):
        head_ids = {id(p) for m in module.from_scratch_layers for p in m.parameters()}
        head_ids |= {id(b) for m in module.from_scratch_layers for b in m.buffers()}
        named = dict(module.named_parameters()) | dict(module.named_buffers())
        trunk_keys = {k for k in own if k in named and id(named[k]) not in head_ids}

    unexpected = sorted(k for k in state if k not in trunk_keys)
    missing = sorted(k for k in trunk_keys if k not in state
                     and not k.endswith("num_batches_tracked"))
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in state if k in trunk_keys and state[k].shape != own[k].shape]
    if bad:
        raise UserError(f"{path}: {len(bad)} shape mismatches loading ImageNet weights "
                         f"(wrong width?): " + "; ".join(bad[:10]))
    if strict and (missing or unexpected):
        raise UserError(f"{path}: ImageNet weights do not match the ResNet-38 trunk: "
                         f"missing {len(missing)} {missing[:10]}, "
                         f"unexpected {len(unexpected)} {unexpected[:10]}")
    if missing or unexpected:
        log.warning("%s: missing trunk keys %s; unexpected keys %s", path, missing, unexpected)
    loaded = sorted(k for k in state if k in trunk_keys)
    with torch.no_grad():
        for k in loaded:
            own[k].copy_(state[k].to(own[k].dtype))
    log.info("%s: loaded %d ImageNet tensors into the trunk", path, len(loaded))
    return LoadReport(loaded, missing, unexpected)
