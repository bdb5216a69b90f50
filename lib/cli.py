"""The command-line vocabulary every script shares: one name for one thing, one boolean style.

* The same concept has the same flag in every script (``--data_root``, ``--crop_size``,
  ``--num_workers``, ``--infer_list``, ``--backbone_width``, ...); names the original code or
  earlier versions of ours used stay accepted as aliases with the same ``dest``
  (``--voc12_root``, ``--crop``, ...).
* Booleans are ``argparse.BooleanOptionalAction`` (``--flip`` / ``--no-flip``); the older
  underscore spellings (``--no_flip``) stay accepted, hidden from ``--help`` (:func:`add_bool`).
* Options outside the paper, which exist for the CPU demo and for training from random
  initialisation, sit in one argument group (:func:`not_in_paper`); their defaults are the
  paper's settings.
"""
from __future__ import annotations

import argparse

NOT_IN_PAPER = "not in the paper (CPU demo / training from scratch)"


def not_in_paper(p: argparse.ArgumentParser):
    """The parser's argument group of options outside the paper (created on first use)."""
    for group in p._action_groups:  # noqa: SLF001 - argparse has no public lookup
        if group.title == NOT_IN_PAPER:
            return group
    return p.add_argument_group(NOT_IN_PAPER, "deviations for the CPU demo and for training "
                                              "from random initialisation; every default is "
                                              "the paper's setting")


def add_bool(p, name: str, default: bool | None, help: str, old: str | None = None) -> None:
    """``--<name>`` / ``--no-<name>`` into ``dest=name``; ``old`` (e.g. ``"--no_flip"``) is a
    hidden alias that sets False. ``p`` is a parser or an argument group."""
    p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help)
    if old:
        p.add_argument(old, dest=name, action="store_false", default=default,
                       help=argparse.SUPPRESS)


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data_root`` (alias ``--voc12_root``, the original's name, used for COCO too) and
    ``--dataset``."""
    p.add_argument("--data_root", "--voc12_root", dest="data_root", required=required,
                   help="dataset root: VOCdevkit/VOC2012 (VOC) or the COCO folder")
    p.add_argument("--dataset", default="voc", choices=["voc", "coco"])


def add_backbone_width(p) -> None:
    """``--backbone_width``: the ResNet-38 channel multiplier of the network a script builds."""
    p.add_argument("--backbone_width", type=float, default=1.0,
                   help="channel multiplier of ResNet-38 (1.0 = the paper; 0.125 for CPU demos)")


def add_num_workers(p, default: int | str = "auto") -> None:
    """``--num_workers`` (alias ``--workers``): data-loading worker processes, an integer or
    ``auto`` (the script resolves it with ``lib.workers``)."""
    from lib.workers import workers_arg

    p.add_argument("--num_workers", "--workers", dest="num_workers", type=workers_arg,
                   default=default,
                   help="data-loading worker processes per process, or 'auto' (default: from "
                        "the cores this process may use, lib/workers.py)")
