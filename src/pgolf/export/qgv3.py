"""PR #160's "QGv3" grouped payload: a quantized state as raw bytes grouped by kind, no pickle.

Layout (little-endian)::

    b"QGv3", u32 meta length, u32 codes length, u32 scales length, u32 passthrough length,
    meta JSON (sorted keys), then the three byte groups

Each group holds its tensors' raw bytes one after another, by sorted name; the meta JSON says, per
group and name, dtype, shape, offset and byte count, and carries the record's ``format``, ``dtypes``
(the dtype each quantized tensor is restored to), ``qmeta`` (bits, packing, ``"scheme": "per_row"``)
and ``passthrough_orig_dtypes``. int6 codes are packed four to three bytes: each code's low six
bits (two's complement), least significant bit first; int8 codes are stored as they are. Codes of
one kind sit together, so the compressor sees long runs of alike bytes (PR #160 compresses with lzma).

pgolf writes this payload under ``PGOLF_SERIALIZER=qgv3`` inside its container (header, CRC) and
keeps its own metadata under the meta key ``"pgolf"``, which PR #160's loader ignores: the payload
decodes with PR #160's own ``deserialize_quant_obj_grouped``. Like PR #160's, it keeps no tensor
order (a state dict loads by name; the order cost 140 compressed bytes on a one-block model): it
reads back in sorted name order, or in the ``"order"`` that older pgolf wrote there. A safetensors
payload cannot start with ``QGv3`` (its header length would be over 1.9 GB), so readers tell the two apart.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import PgolfError, one_line
from pgolf.quant.int8 import (
    KIND_INTN,
    KIND_PASSTHROUGH,
    KIND_PER_ROW,
    KIND_PER_TENSOR,
    QuantEntry,
    QuantizedState,
    dtype_from_name,
    dtype_name,
)

MAGIC = b"QGv3"
_HEADER = struct.Struct("<4sIIII")
GROUPS = ("quantized", "scales", "passthrough")
FORMAT = "clean_per_row_symmetric_int6_v2"  # what PR #160 writes for QUANT_BITS=6
_NUMPY = {"uint8": np.uint8, "int8": np.int8, "float16": np.float16, "float32": np.float32, "int16": np.int16,
          "int32": np.int32, "int64": np.int64, "bool": np.bool_}


def is_qgv3(payload: bytes) -> bool:
    return payload[:4] == MAGIC


# -- int6 packing: four codes in three bytes ------------------------------------------------------


def pack_int6(codes: Tensor) -> Tensor:
    """uint8 bytes of int6 ``codes``: the 6-bit two's complement of each, LSB first, padded to 4."""
    flat = codes.reshape(-1).to(torch.int32) & 0x3F
    flat = torch.cat((flat, flat.new_zeros((-flat.numel()) % 4))).reshape(-1, 4)
    word = flat[:, 0] | (flat[:, 1] << 6) | (flat[:, 2] << 12) | (flat[:, 3] << 18)  # 24 bits
    return torch.stack((word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF), dim=1).reshape(-1).to(torch.uint8)


def unpack_int6(packed: Tensor, shape: tuple[int, ...], source: str) -> Tensor:
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != 3 * ((n + 3) // 4):
        raise PgolfError(f"{source}: packed int6 data of {packed.numel()} bytes does not hold {n} codes")
    b = packed.reshape(-1, 3).to(torch.int32)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    u = torch.stack([(word >> (6 * i)) & 0x3F for i in range(4)], dim=1).reshape(-1)[:n]
    return ((u ^ 0x20) - 0x20).to(torch.int8).reshape(shape)


# -- writing ----------------------------------------------------------------------------------------


def _quantized_parts(e: QuantEntry) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """(stored codes, scale, qmeta) of a quantized entry in PR #160's terms."""
    if e.kind == KIND_PER_TENSOR:
        return e.values, e.scale, {"bits": 8, "packed": False}
    if e.kind == KIND_INTN and (e.group_size or e.lqer is not None or e.bits not in (6, 8)):
        raise PgolfError(f"QGv3 holds per-row int6/int8 codes only; {e.name!r} is int{e.bits}"
                         f"{f' in groups of {e.group_size}' if e.group_size else ''}{' with LQER' if e.lqer else ''}")
    bits = e.bits if e.kind == KIND_INTN else 8
    if bits == 6:
        return pack_int6(e.values), e.scale, {"scheme": "per_row", "axis": 0, "bits": 6, "packed": True,
                                              "shape": list(e.values.shape)}
    return e.values, e.scale, {"scheme": "per_row", "axis": 0, "bits": 8, "packed": False}


def _add(group: dict, buf: bytearray, name: str, t: Tensor) -> None:
    raw = t.detach().cpu().contiguous().numpy().tobytes(order="C")
    group[name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "offset": len(buf), "nbytes": len(raw)}
    buf.extend(raw)


def encode_qgv3(q: QuantizedState, extra_meta: dict[str, Any]) -> bytes:
    """The QGv3 payload of ``q``; PgolfError for an entry the layout cannot hold."""
    tensors: dict[str, dict[str, Tensor]] = {g: {} for g in GROUPS}
    dtypes, qmeta, orig = {}, {}, {}
    for e in q:
        if e.kind == KIND_PASSTHROUGH:
            tensors["passthrough"][e.name] = e.values
            if e.restore_dtype != e.values.dtype:
                orig[e.name] = dtype_name(e.restore_dtype)
            continue
        codes, scale, qmeta[e.name] = _quantized_parts(e)
        tensors["quantized"][e.name], tensors["scales"][e.name] = codes, scale
        dtypes[e.name] = dtype_name(e.restore_dtype)
    meta: dict[str, Any] = {"format": FORMAT, "dtypes": dtypes, "qmeta": qmeta, "passthrough_orig_dtypes": orig,
                            "pgolf": {"meta": extra_meta}}
    bufs = {g: bytearray() for g in GROUPS}
    for g in GROUPS:
        meta[g] = {}
        for name in sorted(tensors[g]):
            _add(meta[g], bufs[g], name, tensors[g][name])
    try:
        text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise PgolfError(f"artifact metadata is not plain JSON ({one_line(exc)})") from None
    head = _HEADER.pack(MAGIC, len(text), *(len(bufs[g]) for g in GROUPS))
    return head + text + b"".join(bytes(bufs[g]) for g in GROUPS)


# -- reading ----------------------------------------------------------------------------------------


def _tensor(blob: memoryview, info: object, name: str, source: str) -> Tensor:
    ok = isinstance(info, dict) and info.get("dtype") in _NUMPY and isinstance(info.get("shape"), list)
    shape = info.get("shape") if ok else None
    if ok and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        offset, nbytes = info.get("offset"), info.get("nbytes")
        dtype = np.dtype(_NUMPY[info["dtype"]])
        if (isinstance(offset, int) and isinstance(nbytes, int) and 0 <= offset <= offset + nbytes <= len(blob)
                and nbytes == math.prod(shape) * dtype.itemsize):
            arr = np.frombuffer(blob[offset : offset + nbytes], dtype=dtype).copy().reshape(shape)
            return torch.from_numpy(arr)
    raise PgolfError(f"{source}: QGv3 tensor {name!r} has a malformed record")


def _entry(name: str, groups: dict, meta: dict, source: str) -> QuantEntry:
    if name in meta["passthrough"]:
        t = _tensor(groups["passthrough"], meta["passthrough"][name], name, source)
        restore = dtype_from_name(meta["passthrough_orig_dtypes"].get(name, dtype_name(t.dtype)))
        return QuantEntry(name, KIND_PASSTHROUGH, t, None, restore or t.dtype)
    if name not in meta["quantized"] or name not in meta["scales"]:
        raise PgolfError(f"{source}: QGv3 tensor {name!r} is listed but not stored")
    codes = _tensor(groups["quantized"], meta["quantized"][name], name, source)
    scale = _tensor(groups["scales"], meta["scales"][name], name, source)
    info = meta["qmeta"].get(name, {})
    restore = dtype_from_name(meta["dtypes"].get(name))
    if not isinstance(info, dict) or restore is None:
        raise PgolfError(f"{source}: QGv3 tensor {name!r} has a malformed qmeta or dtype")
    if info.get("bits") == 6 and info.get("packed"):
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) != 2:
            raise PgolfError(f"{source}: QGv3 tensor {name!r} has a malformed int6 shape")
        return QuantEntry(name, KIND_INTN, unpack_int6(codes, tuple(shape), source), scale, restore, 6, 0)
    kind = KIND_PER_ROW if scale.ndim > 0 else KIND_PER_TENSOR
    return QuantEntry(name, kind, codes, scale, restore)


def decode_qgv3(payload: bytes, source: str) -> tuple[QuantizedState, dict[str, Any]]:
    """Inverse of :func:`encode_qgv3` (for payloads pgolf wrote: they carry its meta)."""
    if len(payload) < _HEADER.size:
        raise PgolfError(f"{source}: QGv3 payload too short")
    magic, meta_len, *lengths = _HEADER.unpack_from(payload)
    if magic != MAGIC or _HEADER.size + meta_len + sum(lengths) != len(payload):
        raise PgolfError(f"{source}: QGv3 payload length mismatch")
    view = memoryview(payload)
    start = _HEADER.size + meta_len
    try:
        meta = json.loads(bytes(view[_HEADER.size : start]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PgolfError(f"{source}: unreadable QGv3 metadata ({one_line(exc)})") from None
    groups = {}
    for g, n in zip(GROUPS, lengths):
        groups[g], start = view[start : start + n], start + n
    keys = ("quantized", "scales", "passthrough", "dtypes", "qmeta", "passthrough_orig_dtypes")
    own = meta.get("pgolf") if isinstance(meta, dict) else None
    if not all(isinstance(meta.get(k), dict) for k in keys) or not isinstance(own, dict) \
            or not isinstance(own.get("order", []), list) or not isinstance(own.get("meta"), dict):
        raise PgolfError(f"{source}: QGv3 metadata lacks its tensor records or pgolf's meta")
    stored = sorted(set(meta["quantized"]) | set(meta["passthrough"]))
    names = own.get("order", stored)
    if sorted(names) != stored:
        raise PgolfError(f"{source}: QGv3 tensor list and stored tensors disagree")
    try:
        q = QuantizedState(tuple(_entry(n, groups, meta, source) for n in names))
    except ValueError as exc:
        raise PgolfError(f"{source}: {exc}") from None
    return q, own["meta"]
