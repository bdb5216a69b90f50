"""Checkpoint files: byte-reproducible, atomic, with a sha256 sidecar verified on load.

* ``save_checkpoint(obj, path)`` serialises ``obj`` (tensors and plain containers) with
  ``torch.save`` into memory under the fixed archive name ``archive``, so two identical runs
  write identical bytes (``torch.save`` to a path stores the file's name, which for an atomic
  write is a random temporary name). It writes ``path`` atomically and then ``<path>.sha256``
  (``sha256sum`` format: ``<hex>  <file name>``). A crash in between leaves a file without its
  sidecar, which still loads (unverified), never a stale sidecar next to a new file.
* ``read_verified(path)`` returns the file's bytes after checking them against the sidecar
  when one exists (a released checkpoint, e.g. the authors', has none and loads unverified);
  a mismatch is a :class:`CheckpointError` (a :class:`lib.errors.UserError`) naming the file.
* ``load_verified(path)`` = ``torch.load(..., weights_only=True)`` of those bytes; a file that
  is not a checkpoint (truncated, an HTML page, MXNet weights under a .pth name, random bytes)
  is one :class:`CheckpointError` saying what it is (``lib.io.unreadable``).
* ``check_fits(state, model_state, path)`` names every key and shape that does not fit.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from lib.errors import UserError
from lib.io import atomic_path, sniff_file, unreadable

SIDECAR_SUFFIX = ".sha256"
# The classifiers of the CAM network and DeepLab-v1: (classes, channels, 1, 1).
CLASSIFIER_KEYS = ("fc8.weight", "cls_conv.weight")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, corrupted or does not fit (a ValueError for older callers)."""


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def checkpoint_bytes(obj) -> bytes:
    """``torch.save(obj)`` as bytes, independent of any file name (deterministic)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def save_checkpoint(obj, path: str | os.PathLike) -> str:
    """Write ``obj`` to ``path`` and its sha256 sidecar; returns the hex digest."""
    path = Path(path)
    data = checkpoint_bytes(obj)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = sidecar_path(path)
    sidecar.unlink(missing_ok=True)  # never leave an old digest next to the new bytes
    write_bytes_atomic(path, data)
    write_bytes_atomic(sidecar, f"{digest}  {path.name}\n".encode())
    return digest


def read_verified(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, checked against ``<path>.sha256`` when that sidecar exists."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        fields = sidecar.read_text().split()
        expected = fields[0].lower() if fields else ""
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise CheckpointError(f"{path}: checksum mismatch (sha256 {actual[:16]}..., {sidecar.name} "
                            f"says {expected[:16] or 'nothing'}...): the file was corrupted or "
                            f"changed after it was written; restore it, or delete {sidecar} to "
                            f"load it unverified")
    return data


def weights_mixup_hint(path: str | os.PathLike, expected: str) -> str:
    """A hint for a weights file in the other framework's format (``expected``: 'torch' or
    'mxnet'), or in neither; '' when the format says nothing more."""
    kind = sniff_file(path)
    if kind == "mxnet" and expected == "torch":
        return "MXNet weights are read from a file named *.params"
    if kind in ("zip", "pickle") and expected == "mxnet":
        return "a torch checkpoint is read from a file named *.pth"
    if kind is None:
        return "neither a torch nor an MXNet weights file"
    return ""


def load_verified(path: str | os.PathLike):
    """``torch.load(weights_only=True, map_location='cpu')`` of the verified bytes of ``path``."""
    data = read_verified(path)
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/UnpicklingError/EOFError
        err = unreadable(path, "torch checkpoint", ("zip", "pickle"), e,
                         hint=weights_mixup_hint(path, "torch"))
        raise CheckpointError(str(err)) from e


def check_fits(state: dict, model_state: dict, path: str | os.PathLike, what: str = "model") -> None:
    """Raise one UserError naming the keys and shapes of ``state`` that do not fit ``model_state``.

    E.g. ``cam.pth does not fit the model: fc8.weight: checkpoint [21, 4096, 1, 1], model
    [6, 512, 1, 1]; 3 more``. ``num_batches_tracked`` may be missing (older checkpoints).
    """
    bad = [k for k, v in state.items()
           if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]
    # A classifier (its rows are the class count) first, then the first other tensor (width).
    bad.sort(key=lambda k: k not in CLASSIFIER_KEYS)
    problems = [f"{k}: checkpoint {list(state[k].shape)}, {what} {list(model_state[k].shape)}"
                for k in bad]
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_state]
    if missing:
        problems.append(f"{len(missing)} {what} tensors missing from the checkpoint "
                        f"(e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors the {what} lacks "
                        f"(e.g. {unexpected[0]})")
    if problems:
        shown = "; ".join(problems[:2])
        more = f"; {len(problems) - 2} more" if len(problems) > 2 else ""
        raise CheckpointError(f"{path}: does not fit the {what} (another class count or "
                        f"--backbone_width?): {shown}{more}")
