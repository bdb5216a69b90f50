"""Reader for MXNet ``.params`` files (NDArray list format) without MXNet, and the key renaming
of the ResNet-38 ImageNet weights to this project's parameter names (docs/METHOD.md section 2).

File layout (all little-endian)::

    uint64 list magic 0x112 | uint64 reserved | uint64 count
    count x NDArray:
        uint32 magic
          0xF993FAC9 (V2): int32 storage type (0 = dense; sparse is rejected),
                           shape = uint32 ndim + ndim x int64
          0xF993FAC8 (V1): shape = uint32 ndim + ndim x int64
          anything else (legacy, pre-2017 files): that uint32 *is* ndim, dims are ndim x uint32
        (ndim == 0: an empty array, nothing more follows)
        int32 dev_type | int32 dev_id          (context, ignored)
        int32 type flag (mshadow: 0 f32, 1 f64, 2 f16, 3 u8, 4 i32, 5 i8, 6 i64, 7 bool,
                         8 i16, 9 u16, 10 u32, 11 u64)
        prod(shape) x itemsize raw bytes (C order)
    uint64 name count (== count, or 0 for an unnamed list)
    name count x (uint64 length + UTF-8 bytes)   e.g. "arg:res4b3_branch2b1_weight"

Any inconsistency (truncation, bad magic, unknown type, count mismatch, trailing bytes) raises
a ``UserError`` (a ``ValueError``) naming the file, the byte offset and the problem; a file of
another recognisable kind (an HTML page, a torch checkpoint, text) is named as such.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from lib.errors import UserError
from lib.io import sniff_format, unreadable

__all__ = [
    "LIST_MAGIC",
    "NDARRAY_V1_MAGIC",
    "NDARRAY_V2_MAGIC",
    "MXNET_DTYPES",
    "read_mxnet_params",
    "write_mxnet_params",
    "mxnet_to_torch_key",
    "convert_mxnet_state_dict",
    "load_mxnet_as_torch",
]

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
# Legacy files store ndim where the magic would be; a real shape never has this many axes.
_MAX_LEGACY_NDIM = 32

MXNET_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"),
    4: np.dtype("<i4"), 5: np.dtype("i1"), 6: np.dtype("<i8"), 7: np.dtype("?"),
    8: np.dtype("<i2"), 9: np.dtype("<u2"), 10: np.dtype("<u4"), 11: np.dtype("<u8"),
}
_FLAG_OF_DTYPE = {dt.newbyteorder("=") if dt.byteorder != "|" else dt: flag
                  for flag, dt in MXNET_DTYPES.items()}


class _Cursor:
    """Bounds-checked little-endian reader over a buffer; errors name the file and offset."""

    def __init__(self, buf, path: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, msg: str, at: int | None = None) -> UserError:
        at = self.pos if at is None else at
        return UserError(f"{self.path}: malformed MXNet .params file at byte {at}: {msg}")

    def take(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes for ``what``; return their start offset."""
        if n < 0 or self.pos + n > self.size:
            raise UserError(
                f"{self.path}: truncated MXNet .params file: {what} needs {n} bytes at byte "
                f"{self.pos}, but the file has {self.size} bytes")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        start = self.take(n, what)
        return struct.unpack_from(fmt, self.buf, start)

    def u32(self, what): return self.unpack("<I", what)[0]
    def i32(self, what): return self.unpack("<i", what)[0]
    def u64(self, what): return self.unpack("<Q", what)[0]


def _read_ndarray(cur: _Cursor, index: int) -> np.ndarray:
    what = f"NDArray #{index}"
    start = cur.pos
    magic = cur.u32(f"{what} magic")
    if magic == NDARRAY_V2_MAGIC:
        stype = cur.i32(f"{what} storage type")
        if stype != 0:
            raise cur.fail(f"{what} has storage type {stype} (only dense arrays, type 0, are "
                           "supported)", at=cur.pos - 4)
    if magic in (NDARRAY_V1_MAGIC, NDARRAY_V2_MAGIC):
        ndim = cur.u32(f"{what} ndim")
        if ndim > _MAX_LEGACY_NDIM:
            raise cur.fail(f"{what} has implausible ndim {ndim}", at=cur.pos - 4)
        shape = cur.unpack(f"<{ndim}q", f"{what} shape")
    elif magic <= _MAX_LEGACY_NDIM:
        ndim = magic
        shape = cur.unpack(f"<{ndim}I", f"{what} shape (legacy format)")
    else:
        raise cur.fail(f"{what}: unknown NDArray magic 0x{magic:08X} (expected 0x{NDARRAY_V2_MAGIC:08X}, "
                       f"0x{NDARRAY_V1_MAGIC:08X} or a legacy ndim <= {_MAX_LEGACY_NDIM})", at=start)
    if any(d < 0 for d in shape):
        raise cur.fail(f"{what} has a negative dimension in shape {tuple(shape)}")
    if ndim == 0:
        return np.zeros((0,), np.float32)
    cur.i32(f"{what} context dev_type")
    cur.i32(f"{what} context dev_id")
    flag_at = cur.pos
    flag = cur.i32(f"{what} type flag")
    if flag not in MXNET_DTYPES:
        raise cur.fail(f"{what} has unsupported type flag {flag} (supported: "
                       f"{sorted(MXNET_DTYPES)})", at=flag_at)
    dtype = MXNET_DTYPES[flag]
    count = int(np.prod(shape, dtype=np.int64))
    data_at = cur.take(count * dtype.itemsize, f"{what} data of shape {tuple(shape)} ({dtype.name})")
    arr = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=data_at)
    # Copy into native byte order so the result outlives the mapped file.
    native = dtype.newbyteorder("=") if dtype.byteorder not in ("|", "=") else dtype
    return arr.astype(native, copy=True).reshape(shape)


def _parse(buf, path: str) -> dict[str, np.ndarray]:
    cur = _Cursor(buf, path)
    magic = cur.u64("list magic")
    if magic != LIST_MAGIC:
        raise cur.fail(f"list magic is 0x{magic:X}, expected 0x{LIST_MAGIC:X} (not an MXNet "
                       "NDArray list file, nor a torch checkpoint)", at=0)
    cur.u64("reserved header field")
    count_at = cur.pos
    count = cur.u64("array count")
    # Each array needs at least 4 bytes: a count beyond that is corruption, not a huge file.
    if count > (cur.size - cur.pos) // 4:
        raise cur.fail(f"array count {count} cannot fit in the remaining {cur.size - cur.pos} bytes",
                       at=count_at)
    arrays = [_read_ndarray(cur, i) for i in range(count)]
    names_at = cur.pos
    n_names = cur.u64("name count")
    if n_names != count:
        if n_names == 0:
            raise cur.fail(f"the file holds {count} unnamed arrays; named parameters are required",
                           at=names_at)
        raise cur.fail(f"name count {n_names} differs from array count {count}", at=names_at)
    names: list[str] = []
    for i in range(n_names):
        length = cur.u64(f"length of name #{i}")
        at = cur.take(length, f"name #{i}")
        try:
            names.append(bytes(buf[at:at + length]).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise cur.fail(f"name #{i} is not UTF-8 ({e})", at=at) from None
    if cur.pos != cur.size:
        raise cur.fail(f"{cur.size - cur.pos} unexpected trailing bytes after the name list")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise cur.fail(f"duplicate array names {dup[:5]}", at=names_at)
    return dict(zip(names, arrays))


def read_mxnet_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray list file -> {name (as stored, e.g. 'arg:conv1a_weight'): array}.

    Arrays come back in native byte order with their stored dtype, in file order.
    Raises FileNotFoundError for a missing file and ValueError for a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MXNet .params file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: truncated MXNet .params file: empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(4096)
    # Not even the start of the list magic: say what the file is (an HTML page, a torch .pth...).
    if not struct.pack("<Q", LIST_MAGIC).startswith(head[:8]) and sniff_format(head) is not None:
        from lib.checkpoint import weights_mixup_hint  # lib.checkpoint needs torch, as we do

        raise unreadable(path, "MXNet .params file", ("mxnet",),
                         hint=weights_mixup_hint(path, "mxnet"))
    # A read-only memory map avoids holding a second full copy of a ~500 MB weight file; the
    # parsed arrays are copies, and the map is released when garbage-collected.
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    return _parse(buf, str(path))


def write_mxnet_params(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                       version: int = 2) -> None:
    """Write ``arrays`` as an MXNet NDArray list file (V2 by default; ``version=1`` or ``0``
    for the V1 / legacy layouts). Used to make fixtures; written atomically."""
    from lib.io import atomic_path

    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        key = a.dtype.newbyteorder("=") if a.dtype.byteorder not in ("|", "=") else a.dtype
        if key not in _FLAG_OF_DTYPE:
            raise ValueError(f"{name}: dtype {a.dtype} has no MXNet type flag")
        if version == 2:
            parts.append(struct.pack(f"<IiI{a.ndim}q", NDARRAY_V2_MAGIC, 0, a.ndim, *a.shape))
        elif version == 1:
            parts.append(struct.pack(f"<II{a.ndim}q", NDARRAY_V1_MAGIC, a.ndim, *a.shape))
        elif version == 0:
            parts.append(struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape))
        else:
            raise UserError(f"unknown NDArray format version {version}")
        if a.ndim == 0:
            continue
        flag = _FLAG_OF_DTYPE[key]
        parts.append(struct.pack("<iii", 1, 0, flag))
        parts.append(a.astype(MXNET_DTYPES[flag], copy=False).tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        b = name.encode("utf-8")
        parts.append(struct.pack("<Q", len(b)) + b)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"".join(parts))


_BN_PARAM = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_var": "running_var"}


def _block_name(tok: str, name: str) -> str:
    """'res4a'/'bn4a' -> 'b4'; 'res4b3'/'bn4b3' -> 'b4_3'."""
    body = tok[3:] if tok.startswith("res") else tok[2:] if tok.startswith("bn") else None
    if body and body[0].isdigit():
        stage = body[0]
        rest = body[1:]
        if rest == "a":
            return f"b{stage}"
        if rest.startswith("b") and rest[1:].isdigit():
            return f"b{stage}_{rest[1:]}"
    raise ValueError(f"unrecognised MXNet ResNet-38 block name {tok!r} in {name!r}")


def mxnet_to_torch_key(name: str) -> str | None:
    """ResNet-38 MXNet parameter name -> torch state_dict key, or None for dropped ones.

    'arg:'/'aux:' prefixes are ignored. 'conv1a_weight' -> 'conv1a.weight'; 'linear1000_*' ->
    None (ImageNet classifier); '<res|bn><d><a|b<k>>_<branch>_<param>' -> 'b<d>[_<k>].conv_<branch>
    .weight' (res) or '.bn_<branch>.<weight|bias|running_mean|running_var>' (bn: gamma, beta,
    moving_mean, moving_var); 'bn7_<param>' -> 'bn7.<param>'. Anything else raises ValueError.
    """
    base = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    toks = base.split("_")
    if toks[0] == "conv1a" and toks[1:] == ["weight"]:
        return "conv1a.weight"
    if toks[0] == "linear1000":
        return None
    if len(toks) >= 3 and "branch" in toks[1]:
        block = _block_name(toks[0], name)
        param = "_".join(toks[2:])
        if toks[0].startswith("res"):
            if param != "weight":
                raise ValueError(f"unexpected conv parameter {param!r} in {name!r}")
            return f"{block}.conv_{toks[1]}.weight"
        if param not in _BN_PARAM:
            raise ValueError(f"unexpected BatchNorm parameter {param!r} in {name!r}")
        return f"{block}.bn_{toks[1]}.{_BN_PARAM[param]}"
    if toks[0] == "bn7" and "_".join(toks[1:]) in _BN_PARAM:
        return f"bn7.{_BN_PARAM['_'.join(toks[1:])]}"
    raise ValueError(f"unrecognised MXNet ResNet-38 parameter name {name!r}")


def convert_mxnet_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """{MXNet name: array} -> {torch key: float32 tensor} via :func:`mxnet_to_torch_key`.

    Dropped names (linear1000) are skipped; two names mapping to one key raise ValueError.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name, arr in arrays.items():
        key = mxnet_to_torch_key(name)
        if key is None:
            continue
        if key in out:
            raise ValueError(f"MXNet names {origin[key]!r} and {name!r} both map to {key!r}")
        out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        origin[key] = name
    return out


def load_mxnet_as_torch(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """:func:`read_mxnet_params` + :func:`convert_mxnet_state_dict`; errors name the file."""
    arrays = read_mxnet_params(path)
    try:
        return convert_mxnet_state_dict(arrays)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
