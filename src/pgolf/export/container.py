"""The pgolf artifact container: a quantized state in a checksummed, compressed file. No pickle.

This module owns the on-disk bytes of an artifact and their validation. Layout (little-endian)::

    offset  size  field
    0       8     magic b"PGOLF\\x00AR"
    8       1     format version (1)
    9       1     compressor id (1 = zlib level 9; ids for lzma/zstd/brotli can be added later)
    10      8     uncompressed payload length, u64
    18      4     CRC32 of the uncompressed payload, u32
    22      ...   compressed payload, to the end of the file

The payload is a safetensors file (tensors ``values/<name>`` and ``scale/<name>``) whose metadata
key ``"pgolf"`` holds JSON: the entries in state-dict order (name, kind, restore dtype) and the
caller's ``meta``. Reading checks everything (magic, version, codec, length, CRC, the safetensors
header, that tensors and metadata agree) and answers any defect with a one-line PgolfError; the
decompressed size is capped so a lying header or a zlib bomb cannot force a huge allocation.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.quant.int8 import KIND_PASSTHROUGH, KINDS, QuantEntry, QuantizedState, dtype_from_name, dtype_name

MAGIC = b"PGOLF\x00AR"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sBBQI")
HEADER_BYTES = _HEADER.size
SCHEMA = "pgolf.quant.v1"
METADATA_KEY = "pgolf"
# Real artifacts are under 16 MB compressed and int8 data barely compresses, so a payload of
# 256 MiB is already absurd; anything claiming more is refused before decompressing.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
ZLIB_LEVEL = 9


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def zlib_decompress_capped(data: bytes, max_bytes: int, source: str) -> bytes:
    """Inflate one complete zlib stream of at most ``max_bytes``; PgolfError on anything else."""
    inflater = zlib.decompressobj()
    try:
        # max_length bounds the output buffer, so a bomb stops at max_bytes + 1 bytes.
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise PgolfError(f"{source}: corrupt zlib data ({_one_line(exc)})") from None
    if len(out) > max_bytes:
        raise PgolfError(f"{source}: zlib data inflates to more than {max_bytes} bytes")
    if not inflater.eof:
        raise PgolfError(f"{source}: truncated zlib data")
    if inflater.unused_data:
        raise PgolfError(f"{source}: {len(inflater.unused_data)} unexpected bytes after the zlib data")
    return out


@dataclass(frozen=True)
class Codec:
    """A compressor: its id in the header, and both directions."""

    codec_id: int
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes, int, str], bytes]  # (data, max_bytes, source) -> payload


CODECS: dict[int, Codec] = {
    1: Codec(1, "zlib", lambda data: zlib.compress(data, ZLIB_LEVEL), zlib_decompress_capped),
}
CODEC_IDS = {c.name: c.codec_id for c in CODECS.values()}


# ---------------------------------------------------------------------------------------------
# Framing: header + compressed payload
# ---------------------------------------------------------------------------------------------


def pack_container(payload: bytes, codec: str = "zlib") -> bytes:
    """Frame ``payload``: header (magic, version, codec, length, CRC32) + compressed bytes."""
    if codec not in CODEC_IDS:
        raise PgolfError(f"unknown compressor {codec!r} (known: {', '.join(sorted(CODEC_IDS))})")
    c = CODECS[CODEC_IDS[codec]]
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, c.codec_id, len(payload), zlib.crc32(payload))
    return header + c.compress(payload)


def unpack_container(blob: bytes, source: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Check the framing of ``blob`` and return its payload; PgolfError naming ``source`` if bad."""
    if len(blob) < HEADER_BYTES:
        if MAGIC.startswith(blob[: len(MAGIC)]):
            raise PgolfError(f"{source}: truncated artifact header ({len(blob)} of {HEADER_BYTES} bytes)")
        raise PgolfError(f"{source}: not a pgolf artifact (bad magic)")
    magic, version, codec_id, length, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise PgolfError(f"{source}: not a pgolf artifact (bad magic)")
    if version != FORMAT_VERSION:
        raise PgolfError(f"{source}: unsupported artifact format version {version} (this pgolf reads {FORMAT_VERSION})")
    codec = CODECS.get(codec_id)
    if codec is None:
        raise PgolfError(f"{source}: unknown compressor id {codec_id}")
    if length > max_payload_bytes:
        raise PgolfError(f"{source}: header claims a {length}-byte payload, over the {max_payload_bytes}-byte cap")
    payload = codec.decompress(blob[HEADER_BYTES:], length, source)
    if len(payload) != length:
        raise PgolfError(f"{source}: payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise PgolfError(f"{source}: payload CRC32 mismatch (corrupt artifact)")
    return payload


# ---------------------------------------------------------------------------------------------
# Payload: safetensors + JSON metadata
# ---------------------------------------------------------------------------------------------


def _tensor_keys(e: QuantEntry) -> list[str]:
    return [f"values/{e.name}"] if e.kind == KIND_PASSTHROUGH else [f"values/{e.name}", f"scale/{e.name}"]


def encode_payload(q: QuantizedState, extra_meta: dict[str, Any]) -> bytes:
    """The safetensors bytes holding ``q`` and, in its metadata, ``extra_meta`` (JSON)."""
    if not isinstance(extra_meta, dict):
        raise PgolfError(f"artifact metadata must be a dict, got {type(extra_meta).__name__}")
    doc = {
        "schema": SCHEMA,
        "entries": [{"name": e.name, "kind": e.kind, "restore_dtype": dtype_name(e.restore_dtype)} for e in q],
        "meta": extra_meta,
    }
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PgolfError(f"artifact metadata is not plain JSON ({_one_line(exc)})") from None
    tensors: dict[str, Tensor] = {}
    for e in q:
        # Clones: safetensors refuses tensors that share storage (tied weights, views).
        tensors[f"values/{e.name}"] = e.values.detach().to("cpu").contiguous().clone()
        if e.scale is not None:
            tensors[f"scale/{e.name}"] = e.scale.detach().to("cpu").contiguous().clone()
    try:
        return safetensors.torch.save(tensors, metadata={METADATA_KEY: text})
    except Exception as exc:  # safetensors raises its own error types for unsupported dtypes
        raise PgolfError(f"cannot serialize the quantized state ({_one_line(exc)})") from None


def _read_metadata(payload: bytes, source: str) -> dict[str, Any]:
    if len(payload) < 8:
        raise PgolfError(f"{source}: payload too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", payload)
    if n > len(payload) - 8:
        raise PgolfError(f"{source}: safetensors header length {n} exceeds the payload")
    try:
        header = json.loads(payload[8 : 8 + n].decode("utf-8"))
        doc = json.loads(header["__metadata__"][METADATA_KEY])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise PgolfError(f"{source}: unreadable safetensors/pgolf metadata ({_one_line(exc)})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise PgolfError(f"{source}: metadata schema is not {SCHEMA!r}")
    if not isinstance(doc.get("entries"), list) or not isinstance(doc.get("meta"), dict):
        raise PgolfError(f"{source}: metadata lacks its entry list or meta object")
    return doc


def _load_tensors(payload: bytes, source: str) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load(payload)
    except Exception as exc:  # the Rust parser's error types are not part of its public API
        raise PgolfError(f"{source}: corrupt safetensors payload ({_one_line(exc)})") from None


def _entry_from(spec: object, tensors: dict[str, Tensor], source: str) -> QuantEntry:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec.get("kind") not in KINDS:
        raise PgolfError(f"{source}: malformed metadata entry {str(spec)[:80]!r}")
    name, kind = spec["name"], spec["kind"]
    dtype = dtype_from_name(spec.get("restore_dtype"))
    if dtype is None:
        raise PgolfError(f"{source}: tensor {name!r} has unknown restore dtype {spec.get('restore_dtype')!r}")
    values = tensors.get(f"values/{name}")
    scale = tensors.get(f"scale/{name}")
    if values is None or (kind != KIND_PASSTHROUGH and scale is None):
        raise PgolfError(f"{source}: tensor {name!r} is listed in the metadata but missing from the payload")
    try:
        return QuantEntry(name, kind, values, scale if kind != KIND_PASSTHROUGH else None, dtype)
    except ValueError as exc:
        raise PgolfError(f"{source}: {exc}") from None


def decode_payload(payload: bytes, source: str) -> tuple[QuantizedState, dict[str, Any]]:
    """Inverse of :func:`encode_payload`, validating that tensors and metadata agree."""
    doc = _read_metadata(payload, source)
    tensors = _load_tensors(payload, source)
    entries = [_entry_from(spec, tensors, source) for spec in doc["entries"]]
    try:
        q = QuantizedState(tuple(entries))
    except ValueError as exc:
        raise PgolfError(f"{source}: {exc}") from None
    expected = {k for e in entries for k in _tensor_keys(e)}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise PgolfError(f"{source}: payload holds tensor {extra[0]!r} that the metadata does not list")
    return q, doc["meta"]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_artifact(q: QuantizedState, extra_meta: dict[str, Any], codec: str = "zlib") -> bytes:
    """The complete artifact file bytes for ``q``."""
    return pack_container(encode_payload(q, extra_meta), codec)


def decode_artifact(
    blob: bytes, source: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[QuantizedState, dict[str, Any]]:
    """Parse artifact bytes; every defect is a PgolfError naming ``source``."""
    return decode_payload(unpack_container(blob, source, max_payload_bytes), source)


def write_artifact(
    path: str | os.PathLike[str], quantized_state: QuantizedState, extra_meta: dict[str, Any], codec: str = "zlib"
) -> int:
    """Write the artifact atomically; return its exact size on disk in bytes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise PgolfError(f"{path}: folder {path.parent} does not exist")
    atomic_write_bytes(path, encode_artifact(quantized_state, extra_meta, codec))
    return os.path.getsize(path)


def read_artifact(
    path: str | os.PathLike[str], max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[QuantizedState, dict[str, Any]]:
    """Read and validate an artifact file: ``(quantized_state, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: artifact file not found")
    size = path.stat().st_size
    # zlib cannot shrink data by more than ~1032x, but no real artifact comes near the payload cap
    # even uncompressed, so a file bigger than that cap is refused before it is read.
    if size > max_payload_bytes + HEADER_BYTES:
        raise PgolfError(f"{path}: {size} bytes is far too large for an artifact")
    return decode_artifact(path.read_bytes(), str(path), max_payload_bytes)


def is_artifact_header(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts with the pgolf artifact magic."""
    return head[: len(MAGIC)] == MAGIC

