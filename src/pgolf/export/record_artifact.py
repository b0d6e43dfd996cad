"""Read a record's own shipped artifact (its ``final_model.*.ptz``) into the float state dict its
evaluation loads, so ``pgolf eval --artifact`` can re-score any record with pgolf's scorer.

Every record's ``main()`` writes its artifact in three layers; each is told apart by its bytes:

1. **compressor**: zlib (reference, PR #1090's ``int8.ptz``, PR #160 with ``COMPRESSOR=zlib``),
   xz/lzma (PR #160, R22, R35/R44 with ``COMPRESSOR=lzma``), zstd (R15, PR #1090's
   ``mixed.ptz``), brotli (R35, R44 by default; brotli has no magic, so a stream is taken for
   brotli when its first kilobytes inflate to one of the payloads below), or R44's ``PGRP``
   per-group container (int8 codes grouped by role across layers, each group lrzip'ed, some groups'
   rows reordered by a stored uint16 permutation and every matrix transposed; the rest brotli'ed);
2. **serialisation**: a ``torch.save`` zip (read with ``torch.load(weights_only=True)``, nothing
   else is ever unpickled), optionally byte-shuffled first (R35's ``BSHF``: the bytes at offset
   ``i mod stride`` stored together), or PR #160's ``QGv3`` (a JSON table plus raw tensor bytes,
   6-bit codes packed four to three bytes);
3. **quantiser**, recognised from the object: ``int8_clean_per_row_v1`` (reference, R15's int6
   codes in that layout, PR #1090's int8) dequantised by :mod:`pgolf.quant.int8`; PR #1090's
   ``mixed_v1`` (``name.__q`` / ``.__scale`` / ``.__dtype``); and the ``{"w": codes, "m": meta}``
   family of R22 (int6/int8 per row), R35 and R44 (GPTQ per row, R44 also int8 gates and LQER
   low-rank corrections, plain or asymmetric).

The ``{"w", "m"}`` family stores no dtypes: each record casts to its evaluation model's dtypes,
which are bf16 for the ``nn.Embedding`` tables (``tok_emb.weight``, ``*.embed.weight``) and fp32
for everything else (CastedLinear weights, banks, and the low-dimensional and control tensors
``restore_fp32_params`` keeps in fp32). :func:`record_dtype` is that rule; the tests check it
against each record's own model.

The result has the record's key names (R22/R44 flat, before their banks are stacked again);
:mod:`pgolf.export.record_layout` maps them onto pgolf's model. Every malformed input raises one
PgolfError naming the file.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import PgolfError, one_line
from pgolf.export.codecs import (
    brotli_decompress_capped,
    lrzip_decompress_capped,
    lzma_decompress_capped,
    zlib_decompress_capped,
    zstd_decompress_capped,
)
from pgolf.export.pergroup import PGRP_MAGIC, ROLE_GROUPS, SORTED_GROUPS, ungroup, unpack_streams
from pgolf.quant.int8 import QUANT_FORMAT, dequantize_reference_object, dtype_from_name

ZIP_MAGIC = b"PK\x03\x04"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BSHF_MAGIC = b"BSHF"
QGV3_MAGIC = b"QGv3"
_INNER_MAGICS = (ZIP_MAGIC, BSHF_MAGIC, QGV3_MAGIC)
_BROTLI_PROBE_BYTES = 4096

# R44's per-group container (its groups, framing and ungrouping: pgolf.export.pergroup, which writes it too)
PGRP_GROUPS, PGRP_SORTED = ROLE_GROUPS, SORTED_GROUPS

# QGv3's tensor dtypes (the record's own table), as numpy reads them.
_QGV3_DTYPES = {"uint8": np.uint8, "int8": np.int8, "float16": np.float16, "float32": np.float32,
                "int16": np.int16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}
_QGV3_HEADER = struct.Struct("<4sIIII")
_MAX_NDIM = 8

State = dict[str, Tensor]


@dataclass(frozen=True)
class RecordArtifact:
    """A record artifact read back: its float state dict (record names) and how it was stored."""

    state: State
    compressor: str  # zlib, lzma, zstd, brotli or pergroup-lrzip
    serialisation: str  # torch, torch+bshf or qgv3
    quant_format: str  # int8_clean_per_row_v1, mixed_v1, qgv3:<format>, w+m
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return f"record-{self.quant_format}+{self.serialisation}+{self.compressor}"


# ---------------------------------------------------------------------------------------------
# Sniffing and the compressor layer
# ---------------------------------------------------------------------------------------------


def is_zlib_header(head: bytes) -> bool:
    # RFC 1950: CM = 8 (deflate), CINFO <= 7, and the first two bytes are a multiple of 31.
    return len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and ((head[0] << 8) | head[1]) % 31 == 0


def _brotli_probe(blob: bytes) -> bool:
    """Whether ``blob`` starts a brotli stream whose output starts with a record payload."""
    import brotli

    d = brotli.Decompressor()
    try:
        out = d.process(blob[:_BROTLI_PROBE_BYTES], output_buffer_limit=64)
    except brotli.error:
        return False
    return out.startswith(_INNER_MAGICS)


def compressor_of(blob: bytes) -> str | None:
    """The outer layer of a record artifact (``pergroup``, ``lzma``, ``zstd``, ``zlib``, ``brotli``)
    judged from its bytes, or None when it is none of them."""
    if blob.startswith(PGRP_MAGIC):
        return "pergroup"
    if blob.startswith(XZ_MAGIC):
        return "lzma"
    if blob.startswith(ZSTD_MAGIC):
        return "zstd"
    if is_zlib_header(blob[:2]):
        return "zlib"
    if _brotli_probe(blob):
        return "brotli"
    return None


_DECOMPRESSORS = {"lzma": lzma_decompress_capped, "zstd": zstd_decompress_capped,
                  "zlib": zlib_decompress_capped, "brotli": brotli_decompress_capped}


# ---------------------------------------------------------------------------------------------
# The serialisation layer
# ---------------------------------------------------------------------------------------------


def byte_unshuffle(data: bytes, source: str) -> bytes:
    """Undo R35's ``BSHF`` byte shuffle: after the magic and a stride byte, the bytes at offset
    ``0 mod stride`` of the original, then those at ``1 mod stride``, and so on."""
    if len(data) < 5 or not data.startswith(BSHF_MAGIC):
        raise PgolfError(f"{source}: truncated BSHF header")
    stride = data[4]
    payload = np.frombuffer(data, dtype=np.uint8, offset=5)
    if stride < 2:
        return payload.tobytes()
    n = payload.size
    out = np.empty(n, dtype=np.uint8)
    start = 0
    for pos in range(stride):
        count = n // stride + (1 if pos < n % stride else 0)
        out[pos::stride] = payload[start:start + count]
        start += count
    return out.tobytes()


def _check_zip(raw: bytes, source: str) -> None:
    # torch.save stores members uncompressed: a member that declares more bytes than the file holds
    # is a zip bomb, refused before torch reads it.
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PgolfError(f"{source}: corrupt torch zip inside the artifact ({one_line(exc)})") from None
    if declared > len(raw):
        raise PgolfError(f"{source}: zip members declare {declared} bytes but the payload has {len(raw)}")


def torch_load_safe(raw: bytes, source: str) -> object:
    """``torch.load(weights_only=True)`` of a torch zip held in memory; PgolfError for anything else."""
    import pickle

    if not raw.startswith(ZIP_MAGIC):
        raise PgolfError(f"{source}: the payload does not hold a torch zip file")
    _check_zip(raw, source)
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise PgolfError(f"{source}: refused, it needs unsafe unpickling ({first[0][:200]})") from None
    except Exception as exc:  # corrupt archives surface as several error types: one answer
        raise PgolfError(f"{source}: unreadable torch payload ({one_line(exc)})") from None


def _qgv3_tensor(blob: memoryview, info: object, name: str, source: str) -> Tensor:
    if not isinstance(info, dict):
        raise PgolfError(f"{source}: QGv3 entry {name!r} is not a table")
    dtype = _QGV3_DTYPES.get(info.get("dtype"))
    shape, offset, nbytes = info.get("shape"), info.get("offset"), info.get("nbytes")
    if dtype is None or not isinstance(shape, list) or len(shape) > _MAX_NDIM \
            or not all(isinstance(v, int) and v >= 0 for v in (*shape, offset, nbytes)):
        raise PgolfError(f"{source}: QGv3 entry {name!r} has a bad dtype, shape, offset or length")
    if math.prod(shape) * np.dtype(dtype).itemsize != nbytes or offset + nbytes > len(blob):
        raise PgolfError(f"{source}: QGv3 entry {name!r} does not fit its section ({nbytes} bytes at {offset})")
    arr = np.frombuffer(blob[offset:offset + nbytes], dtype=dtype).copy().reshape(shape)
    return torch.from_numpy(arr)


def read_qgv3(raw: bytes, source: str) -> dict[str, Any]:
    """PR #160's ``QGv3``: header (magic, four section lengths), JSON table, then the quantized,
    scale and passthrough sections of raw little-endian tensor bytes."""
    if len(raw) < _QGV3_HEADER.size:
        raise PgolfError(f"{source}: truncated QGv3 header")
    _, meta_len, quant_len, scale_len, pass_len = _QGV3_HEADER.unpack_from(raw)
    if _QGV3_HEADER.size + meta_len + quant_len + scale_len + pass_len != len(raw):
        raise PgolfError(f"{source}: QGv3 section lengths do not add up to the payload's {len(raw)} bytes")
    start = _QGV3_HEADER.size
    try:
        meta = json.loads(raw[start:start + meta_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PgolfError(f"{source}: QGv3 table is not JSON ({one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise PgolfError(f"{source}: QGv3 table is not a JSON object")
    view, pos = memoryview(raw), start + meta_len
    sections = {}
    for part, length in (("quantized", quant_len), ("scales", scale_len), ("passthrough", pass_len)):
        table = meta.get(part)
        if not isinstance(table, dict):
            raise PgolfError(f"{source}: QGv3 table lacks its {part!r} section")
        sections[part] = {n: _qgv3_tensor(view[pos:pos + length], i, n, source) for n, i in table.items()}
        pos += length
    obj = {"format": meta.get("format"), **sections}
    for key in ("dtypes", "qmeta", "passthrough_orig_dtypes"):
        value = meta.get(key, {})
        if not isinstance(value, dict):
            raise PgolfError(f"{source}: QGv3 field {key!r} is not a table")
        obj[key] = value
    return obj


# ---------------------------------------------------------------------------------------------
# The quantiser layer
# ---------------------------------------------------------------------------------------------


def unpack_int6(packed: Tensor, shape: list[int], source: str, name: str) -> Tensor:
    """Signed 6-bit codes packed four to three bytes, low bits first (PR #160's layout)."""
    numel = math.prod(shape)
    data = packed.reshape(-1).numpy().astype(np.int16)
    if data.size % 3 or data.size // 3 * 4 < numel or data.size // 3 > (numel + 3) // 4:
        raise PgolfError(f"{source}: {name!r} holds {data.size} packed bytes, not the {shape} 6-bit codes")
    b0, b1, b2 = data[0::3], data[1::3], data[2::3]
    u = np.stack((b0 & 0x3F, ((b0 >> 6) & 0x03) | ((b1 & 0x0F) << 2),
                  ((b1 >> 4) & 0x0F) | ((b2 & 0x03) << 4), (b2 >> 2) & 0x3F), axis=1).reshape(-1)[:numel]
    return torch.from_numpy(((u ^ 0x20) - 0x20).astype(np.int8).reshape(shape))


def _times_scale(q: Tensor, s: Tensor) -> Tensor:
    """fp32 ``q * s``: one scale per row when ``s`` is not a scalar, as every record computes it."""
    if s.ndim > 0:
        if s.numel() != q.shape[0]:
            raise ValueError(f"{s.numel()} scales for {q.shape[0]} rows")
        return q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))
    return q.float() * float(s.item())


def _dtype_named(name: object, what: str, source: str) -> torch.dtype:
    dtype = dtype_from_name(name.split(".")[-1] if isinstance(name, str) else name)
    if dtype is None:
        raise PgolfError(f"{source}: {what} has no valid dtype ({name!r})")
    return dtype


def dequantize_qgv3(obj: dict[str, Any], source: str) -> State:
    """PR #160's ``dequantize_state_dict_lowbit``: codes (6-bit unpacked) times their scales."""
    out: State = {}
    for name, stored in obj["quantized"].items():
        meta = obj["qmeta"].get(name, {})
        meta = meta if isinstance(meta, dict) else {}
        q = stored
        if int(meta.get("bits", 8)) == 6 and meta.get("packed", False):
            q = unpack_int6(stored, [int(v) for v in meta.get("shape", [])], source, name)
        s = obj["scales"].get(name)
        if s is None or q.dtype != torch.int8:
            raise PgolfError(f"{source}: QGv3 tensor {name!r} lacks its scale or int8 codes")
        dtype = _dtype_named(obj["dtypes"].get(name), f"QGv3 tensor {name!r}", source)
        if meta.get("scheme") == "per_row" and s.ndim == 0:
            raise PgolfError(f"{source}: QGv3 tensor {name!r} is per-row but has one scale")
        out[name] = _times_scale(q, s).to(dtype=dtype).contiguous()
    for name, t in obj["passthrough"].items():
        orig = obj["passthrough_orig_dtypes"].get(name)
        out[name] = t.to(dtype=_dtype_named(orig, f"passthrough {name!r}", source)) if isinstance(orig, str) else t
    return out


def dequantize_mixed_v1(obj: dict[str, Any], source: str) -> State:
    """PR #1090's ``mixed_v1``: ``name.__q`` codes, ``.__scale`` (per row or one), ``.__dtype``;
    every other tensor is kept as stored (fp16), as its ``dequantize_state_dict_mixed`` does."""
    out: State = {}
    for key, value in obj.items():
        if key == "__quant_format__" or key.endswith((".__scale", ".__dtype")):
            continue
        if not key.endswith(".__q"):
            if not isinstance(value, Tensor):
                raise PgolfError(f"{source}: mixed_v1 entry {key!r} is not a tensor")
            out[key] = value
            continue
        name = key[: -len(".__q")]
        q, s = value, obj.get(name + ".__scale")
        if not isinstance(q, Tensor) or not isinstance(s, Tensor):
            raise PgolfError(f"{source}: mixed_v1 tensor {name!r} lacks its codes or scale")
        dtype = _dtype_named(obj.get(name + ".__dtype"), f"mixed_v1 tensor {name!r}", source)
        if q.ndim == 2 and s.ndim == 1:
            out[name] = (q.float() * s.float()[:, None]).to(dtype)
        else:
            out[name] = (q.float() * s.float()).to(dtype)
    return out


def record_dtype(name: str) -> torch.dtype:
    """The dtype a ``{"w", "m"}`` record's evaluation model holds ``name`` in (see the module doc)."""
    return torch.bfloat16 if name == "tok_emb.weight" or name.endswith(".embed.weight") else torch.float32


def _lqer_correction(result: State, name: str, info: str) -> Tensor | None:
    """R44's low-rank correction ``A @ B`` of one GPTQ tensor, or None without one."""
    if "lqer_asym" in info:  # A: int2 with one scale; B: int4 with one scale per group of columns
        qa, sa, qb, sb = (result[name + k] for k in (".lqA_a", ".lqAs_a", ".lqB_a", ".lqBs_a"))
        a = qa.float() * float(sa)
        group = qb.numel() // sb.numel()
        b = (qb.reshape(-1, group).float() * sb.float().view(-1, 1)).reshape(qb.shape)
        return a @ b
    if "lqer" in info:  # A and B: int-k with one scale per row
        a = result[name + ".lqA"].float() * result[name + ".lqAs"].float().view(-1, 1)
        b = result[name + ".lqB"].float() * result[name + ".lqBs"].float().view(-1, 1)
        return a @ b
    return None


def _mixed_entry(result: State, name: str, info: object) -> Tensor:
    dtype = record_dtype(name)
    if isinstance(info, str) and "passthrough" in info:
        t = result[name]
        return t.to(dtype) if t.dtype == torch.float16 else t
    if info == "gate_int8_row":
        return (result[name + ".gq"].float() * result[name + ".gs"].float().view(-1, 1)).to(dtype)
    gptq = isinstance(info, str) and info.startswith("gptq")
    if not gptq and not (isinstance(info, dict) and info.get("type") in ("int6", "int8")):
        raise ValueError(f"unknown quantisation {info!r}")
    w = _times_scale(result[name + ".q"], result[name + ".scale"])
    correction = _lqer_correction(result, name, info) if gptq else None
    return (w if correction is None else w + correction).to(dtype)


def dequantize_wm(result: object, meta: object, source: str) -> State:
    """The ``{"w": codes, "m": meta}`` family (R22's ``dequantize_mixed_int6``, R35's and R44's
    ``dequantize_mixed``), one entry per name in ``meta``."""
    if not isinstance(result, dict) or not isinstance(meta, dict):
        raise PgolfError(f"{source}: the artifact's 'w' and 'm' are not tables")
    if not all(isinstance(k, str) and isinstance(t, Tensor) for k, t in result.items()):
        raise PgolfError(f"{source}: the artifact's 'w' is not a name -> tensor table")
    out: State = {}
    for name, info in meta.items():
        try:
            out[name] = _mixed_entry(result, name, info).contiguous()
        except KeyError as exc:
            raise PgolfError(f"{source}: {name!r} lacks its stored tensor {exc.args[0]!r}") from None
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            raise PgolfError(f"{source}: {name!r} cannot be dequantised ({one_line(exc)})") from None
    return out


def _dequantize_object(obj: object, source: str) -> tuple[State, str]:
    """(state, quant format) of a record's unpickled object."""
    if not isinstance(obj, dict):
        raise PgolfError(f"{source}: expected the record's quantised dict, found {type(obj).__name__}")
    fmt = obj.get("__quant_format__")
    if fmt == QUANT_FORMAT:
        return dequantize_reference_object(obj, source), QUANT_FORMAT
    if fmt == "mixed_v1":
        return dequantize_mixed_v1(obj, source), "mixed_v1"
    if set(obj) == {"w", "m"}:
        return dequantize_wm(obj["w"], obj["m"], source), "w+m"
    keys = sorted(map(str, obj))[:4]
    raise PgolfError(f"{source}: __quant_format__ is {fmt!r}, not one this pgolf reads ({QUANT_FORMAT!r}, 'mixed_v1' "
                     f"or a {{'w', 'm'}} table; keys {keys})")


# ---------------------------------------------------------------------------------------------
# R44's per-group container
# ---------------------------------------------------------------------------------------------


def pgrp_streams(blob: bytes, source: str) -> list[bytes]:
    """The streams of a ``PGRP`` container: magic, count (u32), each length (u32), the streams."""
    return unpack_streams(blob, source)


def _group_tensor_names(group: str, count: int) -> list[str]:
    return [group[1:]] if group.startswith("_") else [f"blocks.{i}.{group}" for i in range(count)]


def _pgrp_shapes(manifest: object, group: str, source: str) -> list[tuple[int, ...]]:
    shapes = manifest.get(group) if isinstance(manifest, dict) else None
    if not isinstance(shapes, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) and len(s) <= _MAX_NDIM and all(isinstance(v, int) and v >= 0 for v in s)
            for s in shapes):
        raise PgolfError(f"{source}: PGRP shape manifest lacks group {group!r}")
    return [tuple(s) for s in shapes]


def read_pergroup(blob: bytes, max_bytes: int, source: str) -> tuple[dict, object]:
    """(codes and other stored tensors, meta) of R44's ``PGRP`` container."""
    streams = pgrp_streams(blob, source)
    n = len(PGRP_GROUPS)
    rest = torch_load_safe(brotli_decompress_capped(streams[n], max_bytes, source), source)
    if not isinstance(rest, dict) or set(rest) != {"r", "m", "s"} or not isinstance(rest["r"], dict):
        raise PgolfError(f"{source}: PGRP remainder is not R44's {{'r', 'm', 's'}} table")
    result = dict(rest["r"])
    perm_bytes = brotli_decompress_capped(streams[n + 1], max_bytes, source) if streams[n + 1] else b""
    if len(perm_bytes) % 2:
        raise PgolfError(f"{source}: PGRP permutations have an odd byte count")
    perms, perm_at = np.frombuffer(perm_bytes, dtype="<u2"), 0
    for group, stream in zip(PGRP_GROUPS, streams):
        if not stream:
            continue
        raw = lrzip_decompress_capped(stream, max_bytes, source)
        shapes = _pgrp_shapes(rest["s"], group, source)
        tensors, perm_at = ungroup(raw, group, shapes, perms, perm_at, source)
        result.update(zip(_group_tensor_names(group, len(shapes)), tensors))
    if perm_at != perms.size:
        raise PgolfError(f"{source}: PGRP permutations hold {perms.size} rows, the sorted groups use {perm_at}")
    return result, rest["m"]


# ---------------------------------------------------------------------------------------------
# The whole file
# ---------------------------------------------------------------------------------------------


def _read_payload(raw: bytes, source: str) -> tuple[State, str, str, dict]:
    """(state, serialisation, quant format, meta) of a decompressed payload."""
    if raw.startswith(QGV3_MAGIC):
        obj = read_qgv3(raw, source)
        return dequantize_qgv3(obj, source), "qgv3", f"qgv3:{obj['format']}", {}
    serialisation = "torch"
    if raw.startswith(BSHF_MAGIC):
        raw, serialisation = byte_unshuffle(raw, source), "torch+bshf"
    if not raw.startswith(ZIP_MAGIC):
        raise PgolfError(f"{source}: the stream does not hold a torch zip file, QGv3 or BSHF payload")
    state, fmt = _dequantize_object(torch_load_safe(raw, source), source)
    return state, serialisation, fmt, {"quant_format": fmt} if fmt == QUANT_FORMAT else {}


def decode_record_artifact(blob: bytes, max_bytes: int, source: str) -> RecordArtifact:
    """A record artifact held in memory, read back; PgolfError naming ``source`` for bad input."""
    compressor = compressor_of(blob)
    if compressor is None:
        raise PgolfError(f"{source}: not a record artifact (no zlib, lzma, zstd, brotli or PGRP stream)")
    if compressor == "pergroup":
        result, meta = read_pergroup(blob, max_bytes, source)
        return RecordArtifact(dequantize_wm(result, meta, source), "pergroup-lrzip", "torch", "w+m")
    raw = _DECOMPRESSORS[compressor](blob, max_bytes, source)
    state, serialisation, fmt, meta = _read_payload(raw, source)
    return RecordArtifact(state, compressor, serialisation, fmt, meta)


def read_record_artifact(path: str | Path, max_bytes: int) -> RecordArtifact:
    """Read the record artifact at ``path`` (at most ``max_bytes`` on disk and per decompressed stream)."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise PgolfError(f"{path}: {size} bytes is far too large for a record artifact")
    return decode_record_artifact(path.read_bytes(), max_bytes, str(path))


def is_record_artifact_head(head: bytes) -> bool:
    """Whether a file's first bytes (a few kilobytes) look like one of the records' artifacts."""
    return compressor_of(head) is not None
