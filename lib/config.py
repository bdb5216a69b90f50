"""Stage-3 configuration files: load, validate, override from the command line.

A config is a plain Python file in the repo (``voc/config_voc2012.py``, ``coco/config_coco*.py``)
that defines either a dict ``CONFIG`` or module-level UPPERCASE names. It is executed with
``runpy.run_path`` in a namespace of its own (these are our own trusted files, never user
uploads); the result must hold exactly the keys of :data:`SCHEMA`, each of the declared type.
A run config recorded next to a checkpoint (``<session>.config.json``, key ``"config"``) loads
the same way, so inference can reuse the training configuration.

Overrides come from ``--set KEY=VALUE`` (value parsed with ``ast.literal_eval``; a bare word
such as ``data/coco`` is taken as a string) and from the flags of :func:`add_config_args`
(``--lr``, ``--crop_size``, ... with the names stages 1-2 use for the same settings). Every value is coerced to the key's declared type, so ``--set LR=1``
gives the float 1.0 and ``--set RANDOM_SCALE=[0.5,2]`` the tuple (0.5, 2.0).
"""
from __future__ import annotations

import argparse
import ast
import json
import runpy
from pathlib import Path
from typing import Any, Iterable

from lib.cli import not_in_paper
from lib.errors import UserError, in_range

# key -> (type spec, meaning). Type specs: a Python type, ("tuple", elem_type, length or None),
# or ("optional", type) for values that may be None.
SCHEMA: dict[str, tuple[Any, str]] = {
    "DATASET": (str, "dataset layout: 'voc', 'coco' or 'synthetic' (VOC layout)"),
    "DATA_ROOT": (str, "dataset root (VOCdevkit/VOC2012 or the COCO root)"),
    "TRAIN_SPLIT": (str, "training split name of the layout (train_seg --train_list overrides)"),
    "VAL_SPLIT": (str, "default split of infer_seg"),
    "NUM_CLASSES": (int, "output channels = foreground classes + background"),
    "BACKBONE_WIDTH": (float, "ResNet-38 channel multiplier (1.0 = the paper)"),
    "IMAGENET_WEIGHTS": (("optional", str), "ImageNet weights (.params/.pth); None = random init"),
    "CROP": (int, "training crop size"),
    "RANDOM_SCALE": (("tuple", float, 2), "random rescale range (min, max)"),
    "FLIP": (float, "horizontal flip probability"),
    "HSV": (("tuple", int, 3), "HSV jitter amplitudes (hue, saturation, value), integers"),
    "LR": (float, "base learning rate"),
    "MOMENTUM": (float, "SGD momentum"),
    "WEIGHT_DECAY": (float, "weight decay of the weight groups"),
    "POWER": (float, "poly learning-rate power"),
    "BATCH": (int, "global batch size (split over the processes)"),
    "ITERATIONS": (int, "training iterations (optimiser steps)"),
    "BN_MOMENTUM": (float, "BatchNorm running-stat momentum (PyTorch convention)"),
    "WORKERS": (int, "data-loader workers per process"),
    "GPUS": (int, "processes the run is planned for (torchrun --nproc_per_node); informative"),
    "TEST_SCALES": (("tuple", float, None), "test-time image scales"),
    "TEST_FLIP": (bool, "add the horizontal flip of every test scale"),
    "TEST_CRF": (bool, "dense CRF on the averaged test probabilities"),
    "FSL_WEIGHT": (float, "weight of the feature similarity loss (0 disables it)"),
    "FSL_MU": (float, "FSL colour-kernel offset mu"),
    "FSL_SIGMA": (float, "FSL spatial-kernel sigma"),
}

# key -> allowed range of its value (each element of a tuple), ``lib.errors.in_range`` specs;
# strings must be non-empty, DATASET is a choice, bools and IMAGENET_WEIGHTS are free.
RANGES: dict[str, str] = {
    "NUM_CLASSES": ">= 2", "BACKBONE_WIDTH": "> 0", "CROP": ">= 1", "RANDOM_SCALE": "> 0",
    "FLIP": "[0, 1]", "HSV": "[0, 255]", "LR": "> 0", "MOMENTUM": "[0, 1)",
    "WEIGHT_DECAY": ">= 0", "POWER": ">= 0", "BATCH": ">= 1", "ITERATIONS": ">= 1",
    "BN_MOMENTUM": "(0, 1]", "WORKERS": ">= 0", "GPUS": ">= 1", "TEST_SCALES": "> 0",
    "FSL_WEIGHT": ">= 0", "FSL_MU": "> -inf", "FSL_SIGMA": "> 0",
}
DATASETS = ("voc", "coco", "synthetic")


# Flags of add_config_args, with the names every stage uses for the same thing (lib.cli):
# flag -> (config key, argparse type, help). A user reruns stage 3 with these instead of --set.
FLAG_KEYS: dict[str, tuple[str, Any, str]] = {
    "data_root": ("DATA_ROOT", str, "dataset root"),
    "dataset": ("DATASET", str, "dataset layout"),
    "backbone_width": ("BACKBONE_WIDTH", float, "ResNet-38 channel multiplier"),
    "weights": ("IMAGENET_WEIGHTS", str, "ImageNet weights file; 'none' = random init"),
    "crop_size": ("CROP", int, "training crop size"),
    "batch_size": ("BATCH", int, "global batch size"),
    "lr": ("LR", float, "base learning rate"),
    "momentum": ("MOMENTUM", float, "SGD momentum"),
    "wt_dec": ("WEIGHT_DECAY", float, "weight decay"),
    "max_steps": ("ITERATIONS", int, "training iterations"),
    "num_workers": ("WORKERS", int, "data-loading worker processes per process"),
    "bn_momentum": ("BN_MOMENTUM", float, "BatchNorm running-statistics momentum (the paper's "
                                          "config: 3e-4; 0.1 for training from scratch)"),
}
# Older names of those flags, still accepted (the original's, or stages 1-2's earlier ones).
FLAG_ALIASES = {"data_root": ("--voc12_root",), "crop_size": ("--crop",),
                "num_workers": ("--workers",), "wt_dec": ("--weight_decay",)}
FLAG_CHOICES = {"dataset": DATASETS}
# Flags that change a paper setting only for the CPU demo / training from scratch.
NOT_IN_PAPER_FLAGS = frozenset({"bn_momentum"})


def _type_name(spec) -> str:
    if isinstance(spec, tuple):
        if spec[0] == "optional":
            return f"{spec[1].__name__} or None"
        n = "any length" if spec[2] is None else f"length {spec[2]}"
        return f"tuple of {spec[1].__name__} ({n})"
    return spec.__name__


def _coerce_scalar(key: str, value: Any, typ: type) -> Any:
    """Coerce ``value`` to ``typ`` without losing information; raise ValueError otherwise."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {typ.__name__}, got {value!r} ({type(value).__name__})")


def coerce_value(key: str, value: Any) -> Any:
    """Coerce ``value`` to the declared type of ``key`` (see :data:`SCHEMA`)."""
    if key not in SCHEMA:
        raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(SCHEMA))}")
    spec = SCHEMA[key][0]
    if isinstance(spec, tuple) and spec[0] == "optional":
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce_scalar(key, value, spec[1])
    if isinstance(spec, tuple):
        _, elem, length = spec
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected {_type_name(spec)}, got {value!r}")
        if length is not None and len(value) != length:
            raise UserError(f"{key}: expected {length} values, got {len(value)} ({value!r})")
        if length is None and len(value) == 0:
            raise UserError(f"{key}: needs at least one value")
        return tuple(_coerce_scalar(key, v, elem) for v in value)
    return _coerce_scalar(key, value, spec)


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Check keys (none missing, none unknown) and coerce every value; returns a new dict."""
    unknown = sorted(set(cfg) - set(SCHEMA))
    missing = sorted(set(SCHEMA) - set(cfg))
    if unknown:
        raise UserError(f"{source}: unknown config keys {unknown}; valid keys: "
                         f"{', '.join(sorted(SCHEMA))}")
    if missing:
        raise UserError(f"{source}: missing config keys {missing}")
    out = {}
    for key in SCHEMA:
        try:
            out[key] = coerce_value(key, cfg[key])
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None
    if out["DATASET"] not in DATASETS:
        raise UserError(f"{source}: DATASET must be 'voc', 'coco' or 'synthetic', got "
                        f"{out['DATASET']!r}")
    for key in ("DATA_ROOT", "TRAIN_SPLIT", "VAL_SPLIT"):
        if not out[key].strip():
            raise UserError(f"{source}: {key} must not be empty")
    for key, spec in RANGES.items():
        value = out[key]
        if not all(in_range(v, spec) for v in (value if isinstance(value, tuple) else [value])):
            allowed = f"in {spec}" if spec[0] in "[(" else spec
            each = "each value " if isinstance(value, tuple) else ""
            raise UserError(f"{source}: {key}={value!r} is out of range ({each}must be {allowed}; "
                            f"{SCHEMA[key][1]})")
    lo, hi = out["RANDOM_SCALE"]
    if lo > hi:
        raise UserError(f"{source}: RANDOM_SCALE must be 0 < min <= max, got {out['RANDOM_SCALE']}")
    return out


def load_config(path: str | Path) -> dict:
    """Load and validate a config file (``.py``, or a recorded run config ``.json``).

    ``.py``: executed with ``runpy.run_path`` in a fresh namespace; uses ``CONFIG`` when it is
    a dict, else every module-level UPPERCASE name. ``.json``: the ``"config"`` entry of a run
    config written by ``stage3_seg.train_seg`` (or a flat dict of keys).
    Returns a new dict with exactly the keys of :data:`SCHEMA`, values coerced to their types.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from e
        raw = data.get("config", data) if isinstance(data, dict) else None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a JSON object with a 'config' entry")
    elif path.suffix == ".py":
        try:
            ns = runpy.run_path(str(path), run_name="__icam_config__")
        except Exception as e:  # noqa: BLE001 - a broken config file is reported with its name
            raise UserError(f"{path}: executing the config failed ({type(e).__name__}: {e})") from e
        if isinstance(ns.get("CONFIG"), dict):
            raw = dict(ns["CONFIG"])
        else:
            raw = {k: v for k, v in ns.items() if k.isupper() and not k.startswith("_")}
            if not raw:
                raise UserError(f"{path}: defines neither a CONFIG dict nor UPPERCASE names")
    else:
        raise UserError(f"{path}: config files are .py (or a recorded .json run config)")
    return validate_config(raw, str(path))


def _parse_value(text: str) -> Any:
    """``ast.literal_eval`` of an override value; a bare word (a path) stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``["KEY=VALUE", ...]`` to a copy of ``cfg``.

    VALUE goes through ``ast.literal_eval`` (``0.01``, ``(0.5,1.5)``, ``True``, ``None``, quoted
    strings; an unparsable bare word is a string) and is then coerced to the key's type.
    Raises ValueError for a malformed item, an unknown key (message lists the valid keys) or a
    value of the wrong type.
    """
    out = dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in SCHEMA:
            raise UserError(f"override {item!r}: unknown config key {key!r}; valid keys: "
                             f"{', '.join(sorted(SCHEMA))}")
        try:
            out[key] = coerce_value(key, _parse_value(text.strip()))
        except ValueError as e:
            raise UserError(f"override {item!r}: {e}") from None
    return out


def add_config_args(parser: argparse.ArgumentParser, flags: Iterable[str] | None = None,
                    config_required: bool = True) -> None:
    """Add ``--config``, repeatable ``--set KEY=VALUE`` and shorthand flags for config keys.

    ``flags``: names from :data:`FLAG_KEYS` to add (default: all of them). A flag the parser
    already has (e.g. ``--max_steps`` from ``lib.training.add_common_train_args``) is reused:
    its default becomes None so that only an explicit value overrides the config.
    Resolve the effective config with :func:`config_from_args`.
    """
    parser.add_argument("--config", required=config_required,
                        help="config file (voc/config_voc2012.py, coco/config_coco2014.py, ...)")
    parser.add_argument("--set", dest="config_set", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key (repeatable; applied after the shorthand "
                             "flags); e.g. --set ITERATIONS=100 --set TEST_SCALES=(1.0,)")
    names = list(FLAG_KEYS) if flags is None else list(flags)
    existing = parser._option_string_actions  # noqa: SLF001 - argparse has no public lookup
    for name in names:
        key, typ, help_text = FLAG_KEYS[name]
        opt = f"--{name}"
        if opt in existing:
            existing[opt].default = None
            existing[opt].help = f"{help_text} (overrides config {key})"
        else:
            group = not_in_paper(parser) if name in NOT_IN_PAPER_FLAGS else parser
            group.add_argument(opt, *FLAG_ALIASES.get(name, ()), dest=name, type=typ,
                               default=None, choices=FLAG_CHOICES.get(name),
                               help=f"{help_text} (overrides config {key})")
    parser.set_defaults(_config_flags=tuple(names))


def config_from_args(args: argparse.Namespace, base: dict | None = None) -> dict:
    """Effective config: ``base`` (or ``load_config(args.config)``), shorthand flags, then ``--set``."""
    cfg = dict(base) if base is not None else load_config(args.config)
    for name in getattr(args, "_config_flags", ()):
        value = getattr(args, name, None)
        if value is not None:
            key = FLAG_KEYS[name][0]
            try:
                cfg[key] = coerce_value(key, value)
            except ValueError as e:
                raise UserError(f"--{name}: {e}") from None
    cfg = apply_overrides(cfg, getattr(args, "config_set", []) or [])
    return validate_config(cfg, "effective config (after command-line overrides)")


def describe_keys() -> str:
    """One line per key: name, type and meaning (for docs and --help epilogues)."""
    return "\n".join(f"{k:<17} {_type_name(t):<28} {d}" for k, (t, d) in SCHEMA.items())
