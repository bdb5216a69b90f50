"""Convert the MXNet ResNet-38 ImageNet weights to a torch state_dict (no MXNet needed).

    python -m tools.data.convert_mxnet_params ilsvrc-cls_rna-a1_cls1000_ep-0001.params resnet38d.pth

The output holds the trunk tensors under this project's names (``conv1a.weight``,
``b4_3.bn_branch2a.running_mean`` ...; the ImageNet classifier ``linear1000`` is dropped), is
written atomically and loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import argparse

import torch

from lib.errors import run_main
from lib.io import atomic_path
from lib.mxnet_params import load_mxnet_as_torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="MXNet .params file")
    ap.add_argument("dst", help="output .pth (torch state_dict)")
    args = ap.parse_args(argv)
    state = load_mxnet_as_torch(args.src)
    with atomic_path(args.dst) as tmp:
        torch.save(state, tmp)
    n = sum(t.numel() for t in state.values())
    print(f"{args.dst}: {len(state)} tensors, {n:,} values")
    return 0


if __name__ == "__main__":
    run_main(main, "convert_mxnet_params")
