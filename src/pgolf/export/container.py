"""The pgolf artifact container: a quantized state in a checksummed, compressed file. No pickle.

This module owns the on-disk bytes of an artifact and their validation. Layout (little-endian)::

    offset  size  field
    0       8     magic b"PGOLF\\x00AR"
    8       1     format version (1)
    9       1     compressor id (pgolf.export.codecs: 1 zlib-9, 2 lzma, 3 zstd-22, 4 brotli-11, 5 lrzip,
                  6 lrzip-zpaq, 7 stored)
    10      8     uncompressed payload length, u64 (of the shuffled stream, when shuffled)
    18      4     CRC32 of the uncompressed payload, u32 (likewise)
    22      ...   compressed payload, to the end of the file

The payload is a safetensors file (or, under ``PGOLF_SERIALIZER=qgv3``, PR #160's grouped layout:
pgolf.export.qgv3; under ``PGOLF_SERIALIZER=pergroup``, R44's per-group streams, each compressed
alone, the container then storing them as they are: compressor id 7, pgolf.export.pergroup) (tensors ``values/<name>`` and ``scale/<name>``) whose metadata
key ``"pgolf"`` holds JSON: the entries in state-dict order (name, kind, restore dtype) and the
caller's ``meta``. A v2 entry with an LQER correction (pgolf.quant.lqer) adds an ``lqer`` record
(mode, bits, group size and the keys of its four tensors ``<role>.lqer.<part>.<dtype>/<name>``). Reading checks everything (magic, version, codec, length, CRC, the safetensors
header, that tensors and metadata agree) and answers any defect with a one-line PgolfError; the
decompressed size is capped so a lying header or a zlib bomb cannot force a huge allocation.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from pgolf.errors import PgolfError, one_line
from pgolf.files import atomic_write
from pgolf.export.bitpack import pack_codes, shuffle_bytes, shuffle_stream, unpack_codes, unshuffle_bytes, unshuffle_stream
from pgolf.export.codecs import AUTO, CODEC_IDS, CODECS, Codec, codec_by_id, codec_named, codec_or_stored, compress_best, zlib_decompress_capped  # noqa: F401
from pgolf.quant.int8 import (
    INTN_BITS,
    KIND_INTN,
    KIND_PASSTHROUGH,
    KINDS,
    QuantEntry,
    QuantizedState,
    dtype_from_name,
    dtype_name,
)
from pgolf.quant.policy import tensor_role

MAGIC = b"PGOLF\x00AR"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sBBQI")
HEADER_BYTES = _HEADER.size
SCHEMA = "pgolf.quant.v1"
METADATA_KEY = "pgolf"
# Real artifacts are under 16 MB compressed and int8 data barely compresses, so a payload of
# 256 MiB is already absurd; anything claiming more is refused before decompressing.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024
SCHEMA_V2 = "pgolf.quant.v2"
# Entries may not claim more dimensions or elements than any real state dict holds.
MAX_NDIM = 8
# The tensors of an LQER correction, stored under ``<role>.lqer.<part>.<dtype>/<name>``.
LQER_PARTS = ("a_codes", "a_scale", "b_codes", "b_scale")


# ---------------------------------------------------------------------------------------------
# Framing: header + compressed payload
# ---------------------------------------------------------------------------------------------


def pack_container(payload: bytes, codec: str = "zlib", stream_shuffle: int = 0) -> bytes:
    """Frame ``payload``: header (magic, version, codec, length, CRC32) + compressed bytes.

    ``codec`` is a compressor name or ``"auto"``: every available compressor, smallest output wins.
    ``stream_shuffle`` (a stride >= 2): the payload is byte-shuffled as a whole before compressing,
    in R35's ``BSHF`` framing (pgolf.export.bitpack); length and CRC are then those of the shuffled
    bytes, and reading undoes the shuffle after checking them.
    """
    if stream_shuffle:
        payload = shuffle_stream(payload, stream_shuffle)
    if codec == "auto":  # AUTO, spelled as a literal so that a bundle can fold it
        c, body = compress_best(payload)
    else:
        c = codec_or_stored(codec)
        body = c.compress(payload)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, c.codec_id, len(payload), zlib.crc32(payload))
    return header + body


def unpack_container(
    blob: bytes, source: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES, expect_codec: str | None = None,
    stream_shuffled: bool = True,
) -> bytes:
    """Check the framing of ``blob`` and return its payload; PgolfError naming ``source`` if bad.

    ``expect_codec`` (a compressor name): the header must name that compressor (a run reading the
    artifact it just wrote knows which; a bundle then ships that decompressor only). ``stream_shuffled``
    False: the payload was written without a stream shuffle (such a run knows it too), so none is undone."""
    if len(blob) < HEADER_BYTES:
        if MAGIC.startswith(blob[: len(MAGIC)]):
            raise PgolfError(f"{source}: truncated artifact header ({len(blob)} of {HEADER_BYTES} bytes)")
        raise PgolfError(f"{source}: not a pgolf artifact (bad magic)")
    magic, version, codec_id, length, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise PgolfError(f"{source}: not a pgolf artifact (bad magic)")
    if version != FORMAT_VERSION:
        raise PgolfError(f"{source}: unsupported artifact format version {version} (this pgolf reads {FORMAT_VERSION})")
    if expect_codec is not None:
        codec = codec_or_stored(expect_codec)
        if codec.codec_id != codec_id:
            raise PgolfError(f"{source}: compressor id {codec_id}, expected {codec.codec_id} ({expect_codec})")
    else:
        codec = codec_by_id(codec_id)
        if codec is None:
            raise PgolfError(f"{source}: unknown compressor id {codec_id}")
    if length > max_payload_bytes:
        raise PgolfError(f"{source}: header claims a {length}-byte payload, over the {max_payload_bytes}-byte cap")
    payload = codec.decompress(blob[HEADER_BYTES:], length, source)
    if len(payload) != length:
        raise PgolfError(f"{source}: payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != crc:
        raise PgolfError(f"{source}: payload CRC32 mismatch (corrupt artifact)")
    return unshuffle_stream(payload) if stream_shuffled else payload


# ---------------------------------------------------------------------------------------------
# Payload: safetensors + JSON metadata
# ---------------------------------------------------------------------------------------------


def _tensor_keys(e: QuantEntry) -> list[str]:
    return [f"values/{e.name}"] if e.kind == KIND_PASSTHROUGH else [f"values/{e.name}", f"scale/{e.name}"]


def _needs_v2(q: QuantizedState, shuffle: bool) -> bool:
    return shuffle or any(e.kind == KIND_INTN for e in q)


def _dump_doc(doc: dict[str, Any]) -> str:
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PgolfError(f"artifact metadata is not plain JSON ({one_line(exc)})") from None


def _save(tensors: dict[str, Tensor], text: str) -> bytes:
    try:
        return safetensors.torch.save(tensors, metadata={METADATA_KEY: text})
    except Exception as exc:  # safetensors raises its own error types for unsupported dtypes
        raise PgolfError(f"cannot serialize the quantized state ({one_line(exc)})") from None


def _stored_part(e: QuantEntry, part: str, t: Tensor, shuffle: bool, pack: bool) -> tuple[str, Tensor, dict[str, Any]]:
    """Key, stored tensor and layout record of one tensor of an entry (v2 layout)."""
    t = t.detach().to("cpu").contiguous()
    role = tensor_role(e.name)
    if part == "values" and e.kind == KIND_INTN and not pack:
        # One code per byte: byte-oriented compressors model these far better than packed bits.
        return f"{role}.codes.int{e.bits}/{e.name}", t.clone(), {"layout": "raw"}
    if part == "values" and e.kind == KIND_INTN:
        spec = {"layout": "bits", "shape": list(t.shape)}
        return f"{role}.codes.int{e.bits}/{e.name}", pack_codes(t, e.bits), spec
    if shuffle and t.is_floating_point() and t.element_size() > 1:
        spec = {"layout": "shuffle", "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
        return f"{role}.{part}.shuffled.{dtype_name(t.dtype)}/{e.name}", shuffle_bytes(t), spec
    # Clones: safetensors refuses tensors that share storage (tied weights, views).
    return f"{role}.{part}.{dtype_name(t.dtype)}/{e.name}", t.clone(), {"layout": "raw"}


def _lqer_spec(e: QuantEntry, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Store an entry's LQER factors (codes one per byte, fp16 scales) and describe them."""
    lr, keys = e.lqer, {}
    for p in LQER_PARTS:
        t = getattr(lr, p).detach().cpu().contiguous().clone()
        keys[p] = f"{tensor_role(e.name)}.lqer.{p}.{dtype_name(t.dtype)}/{e.name}"
        tensors[keys[p]] = t
    return {"mode": lr.mode, "bits": lr.bits, "group_size": lr.group_size, "tensors": keys}


def entry_spec(e: QuantEntry) -> dict[str, Any]:
    """A v2 entry's record before its stored parts: name, kind, restore dtype (and an intN's bits)."""
    spec: dict[str, Any] = {"name": e.name, "kind": e.kind, "restore_dtype": dtype_name(e.restore_dtype), "tensors": {}}
    if e.kind == KIND_INTN:
        spec.update(bits=e.bits, group_size=e.group_size)
    return spec


def encode_payload(
    q: QuantizedState, extra_meta: dict[str, Any], *, shuffle: bool = False, pack: bool = False, v1_only: bool = False,
    serializer: str = "pgolf",
) -> bytes:
    """The safetensors bytes holding ``q`` and, in its metadata, ``extra_meta`` (JSON).

    States of only reference kinds (and no shuffle) use the v1 layout, byte for byte as before.
    Otherwise (v2) intN codes are bit-packed, fp16/fp32 tensors optionally byte-shuffled, and
    keys are prefixed by role, part and layout so that similar bytes sit together in the payload.
    intN codes are stored one per byte unless ``pack`` (then bit-packed: smallest raw, but it
    hides the byte structure from compressors, so packed files usually compress worse).
    ``v1_only``: a state that needs v2 is an error (the caller knows from its config that it cannot).
    ``serializer="qgv3"``: PR #160's grouped layout instead (pgolf.export.qgv3).
    """
    if not isinstance(extra_meta, dict):
        raise PgolfError(f"artifact metadata must be a dict, got {type(extra_meta).__name__}")
    if serializer != "pgolf":
        return _encode_other(q, extra_meta, serializer)
    if not _needs_v2(q, shuffle):
        doc = {
            "schema": SCHEMA,
            "entries": [{"name": e.name, "kind": e.kind, "restore_dtype": dtype_name(e.restore_dtype)} for e in q],
            "meta": extra_meta,
        }
        tensors: dict[str, Tensor] = {}
        for e in q:
            tensors[f"values/{e.name}"] = e.values.detach().to("cpu").contiguous().clone()
            if e.scale is not None:
                tensors[f"scale/{e.name}"] = e.scale.detach().to("cpu").contiguous().clone()
        return _save(tensors, _dump_doc(doc))
    if v1_only:
        raise PgolfError("this quantized state needs the v2 artifact layout, but v1 was asked for")
    specs, tensors = [], {}
    for e in q:
        spec = entry_spec(e)
        for part, t in (("values", e.values), ("scale", e.scale)):
            if t is None:
                continue
            key, stored, layout = _stored_part(e, part, t, shuffle, pack)
            tensors[key] = stored
            spec["tensors"][part] = {"key": key, **layout}
        if e.lqer is not None:
            spec["lqer"] = _lqer_spec(e, tensors)
        specs.append(spec)
    return _save(tensors, _dump_doc({"schema": SCHEMA_V2, "entries": specs, "meta": extra_meta}))


SERIALIZERS = ("pgolf", "qgv3", "pergroup")


def _encode_other(q: QuantizedState, extra_meta: dict[str, Any], serializer: str) -> bytes:
    if serializer == "qgv3":
        from pgolf.export.qgv3 import encode_qgv3

        return encode_qgv3(q, extra_meta)
    if serializer == "pergroup":  # its groups need the compressor: encode_artifact writes it
        raise PgolfError("the pergroup serializer compresses its own groups: write it with encode_artifact")
    raise PgolfError(f"unknown serializer {serializer!r} (known: {', '.join(SERIALIZERS)})")


def _read_metadata(payload: bytes, source: str) -> dict[str, Any]:
    if len(payload) < 8:
        raise PgolfError(f"{source}: payload too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", payload)
    if n > len(payload) - 8:
        raise PgolfError(f"{source}: safetensors header length {n} exceeds the payload")
    try:
        header = json.loads(payload[8 : 8 + n].decode("utf-8"))
        doc = json.loads(header["__metadata__"][METADATA_KEY])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PgolfError(f"{source}: unreadable safetensors/pgolf metadata ({one_line(exc)})") from None
    if not isinstance(doc, dict) or doc.get("schema") not in (SCHEMA, SCHEMA_V2):
        raise PgolfError(f"{source}: metadata schema is not {SCHEMA!r} or {SCHEMA_V2!r}")
    if not isinstance(doc.get("entries"), list) or not isinstance(doc.get("meta"), dict):
        raise PgolfError(f"{source}: metadata lacks its entry list or meta object")
    return doc


def _load_tensors(payload: bytes, source: str) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load(payload)
    except Exception as exc:  # the Rust parser's error types are not part of its public API
        raise PgolfError(f"{source}: corrupt safetensors payload ({one_line(exc)})") from None


def _make_entry(name: str, kind: str, values: Tensor, scale: Tensor | None, dtype, source: str, **extra) -> QuantEntry:
    try:
        return QuantEntry(name, kind, values, scale, dtype, **extra)
    except ValueError as exc:
        raise PgolfError(f"{source}: {exc}") from None


def _entry_head(spec: object, source: str) -> tuple[str, str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec.get("kind") not in KINDS:
        raise PgolfError(f"{source}: malformed metadata entry {str(spec)[:80]!r}")
    name, kind = spec["name"], spec["kind"]
    dtype = dtype_from_name(spec.get("restore_dtype"))
    if dtype is None:
        raise PgolfError(f"{source}: tensor {name!r} has unknown restore dtype {spec.get('restore_dtype')!r}")
    return name, kind, dtype


def _entry_from(spec: object, tensors: dict[str, Tensor], source: str) -> QuantEntry:
    name, kind, dtype = _entry_head(spec, source)
    if kind == KIND_INTN:
        raise PgolfError(f"{source}: tensor {name!r} is intn, which a v1 artifact cannot hold")
    values = tensors.get(f"values/{name}")
    scale = tensors.get(f"scale/{name}")
    if values is None or (kind != KIND_PASSTHROUGH and scale is None):
        raise PgolfError(f"{source}: tensor {name!r} is listed in the metadata but missing from the payload")
    return _make_entry(name, kind, values, scale if kind != KIND_PASSTHROUGH else None, dtype, source)


def _shape_of(layout: dict, name: str, source: str) -> tuple[int, ...]:
    shape = layout.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_PAYLOAD_BYTES * 8 for d in shape)
    ):
        raise PgolfError(f"{source}: tensor {name!r} has a malformed stored shape {str(shape)[:60]}")
    return tuple(shape)


def _restore_part(layout: object, tensors: dict[str, Tensor], name: str, bits: int, source: str) -> tuple[str, Tensor]:
    if not isinstance(layout, dict) or not isinstance(layout.get("key"), str):
        raise PgolfError(f"{source}: tensor {name!r} has a malformed layout record")
    key = layout["key"]
    stored = tensors.get(key)
    if stored is None:
        raise PgolfError(f"{source}: tensor {name!r} refers to {key[:80]!r}, missing from the payload")
    kind = layout.get("layout")
    if kind == "raw":
        return key, stored
    if kind == "bits":
        return key, unpack_codes(stored, bits, _shape_of(layout, name, source), source)
    if kind == "shuffle":
        dtype = dtype_from_name(layout.get("dtype"))
        if dtype is None or not dtype.is_floating_point:
            raise PgolfError(f"{source}: tensor {name!r} has a bad shuffled dtype {layout.get('dtype')!r}")
        return key, unshuffle_bytes(stored, dtype, _shape_of(layout, name, source), source)
    raise PgolfError(f"{source}: tensor {name!r} has unknown layout {str(kind)[:40]!r}")


def _entry_from_v2(spec: object, tensors: dict[str, Tensor], used: set[str], source: str) -> QuantEntry:
    name, kind, dtype = _entry_head(spec, source)
    assert isinstance(spec, dict)
    bits, group = spec.get("bits", 8), spec.get("group_size", 0)
    if kind == KIND_INTN and (not isinstance(bits, int) or bits not in INTN_BITS or not isinstance(group, int)):
        raise PgolfError(f"{source}: tensor {name!r} has bad bits/group_size {bits!r}/{group!r}")
    parts = spec.get("tensors")
    if not isinstance(parts, dict) or "values" not in parts or (kind != KIND_PASSTHROUGH and "scale" not in parts):
        raise PgolfError(f"{source}: tensor {name!r} lacks its tensor records")
    restored: dict[str, Tensor] = {}
    for part in ("values", "scale") if kind != KIND_PASSTHROUGH else ("values",):
        key, t = _restore_part(parts[part], tensors, name, bits if part == "values" and kind == KIND_INTN else 8, source)
        if key in used:
            raise PgolfError(f"{source}: payload tensor {key[:80]!r} is used twice")
        used.add(key)
        restored[part] = t
    extra = {"bits": bits, "group_size": group} if kind == KIND_INTN else {}
    if "lqer" in spec:
        extra["lqer"] = _lqer_from(spec["lqer"], tensors, used, name, source)
    return _make_entry(name, kind, restored["values"], restored.get("scale"), dtype, source, **extra)


def _lqer_from(spec: object, tensors: dict[str, Tensor], used: set[str], name: str, source: str):
    """The LowRank an entry's ``lqer`` record describes (QuantEntry validates it with the entry)."""
    from pgolf.quant.lqer import LowRank

    keys = spec.get("tensors") if isinstance(spec, dict) else None
    if not isinstance(keys, dict) or not all(isinstance(keys.get(p), str) and keys[p] in tensors for p in LQER_PARTS):
        raise PgolfError(f"{source}: tensor {name!r} has a malformed LQER record")
    for p in LQER_PARTS:
        if keys[p] in used:
            raise PgolfError(f"{source}: payload tensor {keys[p][:80]!r} is used twice")
        used.add(keys[p])
    return LowRank(spec.get("mode"), *(tensors[keys[p]] for p in LQER_PARTS), spec.get("bits"), spec.get("group_size"))


def decode_payload(
    payload: bytes, source: str, v1_only: bool = False, serializer: str | None = None, group_codec: str | None = None,
) -> tuple[QuantizedState, dict[str, Any]]:
    """Inverse of :func:`encode_payload`, validating that tensors and metadata agree (``v1_only``:
    a v2 payload is refused). A QGv3 payload (pgolf.export.qgv3) is read as such, and so is a
    per-group one (pgolf.export.pergroup), unless ``serializer`` (what the caller wrote) is another.
    The tests of ``serializer`` are literals in a bundle (its round trip reads what it wrote): it ships
    the reader of its own serializer alone. ``group_codec``: a per-group payload's groups must name
    that compressor (or ``stored``; see :func:`pgolf.export.pergroup.decode_pergroup`)."""
    if payload[:4] == b"QGv3":
        if v1_only or serializer not in (None, "qgv3"):
            raise PgolfError(f"{source}: a QGv3 artifact where a {serializer or 'v1'} one was expected")
        from pgolf.export.qgv3 import decode_qgv3

        return decode_qgv3(payload, source)
    if payload[:4] == b"PGRP":
        if v1_only or serializer not in (None, "pergroup"):
            raise PgolfError(f"{source}: a per-group artifact where a {serializer or 'v1'} one was expected")
        from pgolf.export.pergroup import decode_pergroup

        return decode_pergroup(payload, source, group_codec)
    if serializer not in (None, "pgolf"):
        raise PgolfError(f"{source}: a pgolf-layout artifact where a {serializer} one was expected")
    doc = _read_metadata(payload, source)
    tensors = _load_tensors(payload, source)
    if doc["schema"] == SCHEMA:
        entries = [_entry_from(spec, tensors, source) for spec in doc["entries"]]
        expected = {k for e in entries for k in _tensor_keys(e)}
    elif v1_only:
        raise PgolfError(f"{source}: a v2 artifact where a v1 one was expected")
    else:
        expected = set()
        entries = [_entry_from_v2(spec, tensors, expected, source) for spec in doc["entries"]]
    return state_of_entries(entries, tensors, expected, source), doc["meta"]


def state_of_entries(entries: list[QuantEntry], tensors: dict[str, Tensor], used: set[str], source: str) -> QuantizedState:
    """The state of ``entries`` read from ``tensors``; PgolfError if they do not form one, or if a
    tensor outside ``used`` (the keys the entries read) is stored."""
    try:
        q = QuantizedState(tuple(entries))
    except ValueError as exc:
        raise PgolfError(f"{source}: {exc}") from None
    extra = sorted(set(tensors) - used)
    if extra:
        raise PgolfError(f"{source}: payload holds tensor {extra[0]!r} that the metadata does not list")
    return q


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def encode_artifact(
    q: QuantizedState, extra_meta: dict[str, Any], codec: str = "zlib", *, shuffle: bool = False, pack: bool = False,
    v1_only: bool = False, stream_shuffle: int = 0, serializer: str = "pgolf",
) -> bytes:
    """The complete artifact file bytes for ``q`` (``codec`` may be ``"auto"``: smallest wins;
    ``stream_shuffle``: see :func:`pack_container`; ``serializer``: :func:`encode_payload`; under
    ``pergroup`` ``codec`` compresses each group and the container stores the streams as they are)."""
    if serializer == "pergroup":
        from pgolf.export.pergroup import encode_pergroup

        # "stored" (the compressor of a payload that compressed its own parts) as a literal, so that a
        # bundle folds the container's compressor
        return pack_container(encode_pergroup(q, extra_meta, codec, shuffle=shuffle), "stored", stream_shuffle)
    payload = encode_payload(q, extra_meta, shuffle=shuffle, pack=pack, v1_only=v1_only, serializer=serializer)
    return pack_container(payload, codec, stream_shuffle)


def decode_artifact(
    blob: bytes, source: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES, expect_codec: str | None = None,
    v1_only: bool = False, serializer: str | None = None, stream_shuffled: bool = True, group_codec: str | None = None,
) -> tuple[QuantizedState, dict[str, Any]]:
    """Parse artifact bytes; every defect is a PgolfError naming ``source`` (``expect_codec``,
    ``stream_shuffled``, ``v1_only``, ``serializer``, ``group_codec``: see :func:`unpack_container`,
    :func:`decode_payload`)."""
    payload = unpack_container(blob, source, max_payload_bytes, expect_codec, stream_shuffled)
    return decode_payload(payload, source, v1_only, serializer, group_codec)


def write_artifact(
    path: str | os.PathLike[str],
    quantized_state: QuantizedState,
    extra_meta: dict[str, Any],
    codec: str = "zlib",
    *,
    shuffle: bool = False,
    v1_only: bool = False,
    stream_shuffle: int = 0,
    serializer: str = "pgolf",
) -> int:
    """Write the artifact atomically; return its exact size on disk in bytes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise PgolfError(f"{path}: folder {path.parent} does not exist")
    atomic_write(path, encode_artifact(quantized_state, extra_meta, codec, shuffle=shuffle, v1_only=v1_only,
                                       stream_shuffle=stream_shuffle, serializer=serializer))
    return os.path.getsize(path)


def read_artifact(
    path: str | os.PathLike[str], max_payload_bytes: int = MAX_PAYLOAD_BYTES, expect_codec: str | None = None,
    v1_only: bool = False, serializer: str | None = None, stream_shuffled: bool = True, group_codec: str | None = None,
) -> tuple[QuantizedState, dict[str, Any]]:
    """Read and validate an artifact file: ``(quantized_state, meta)`` (``expect_codec``,
    ``stream_shuffled``, ``v1_only``, ``serializer``, ``group_codec``: see :func:`decode_artifact`)."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: artifact file not found")
    size = path.stat().st_size
    # zlib cannot shrink data by more than ~1032x, but no real artifact comes near the payload cap
    # even uncompressed, so a file bigger than that cap is refused before it is read.
    if size > max_payload_bytes + HEADER_BYTES:
        raise PgolfError(f"{path}: {size} bytes is far too large for an artifact")
    return decode_artifact(path.read_bytes(), str(path), max_payload_bytes, expect_codec, v1_only, serializer,
                           stream_shuffled, group_codec)


def is_artifact_header(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts with the pgolf artifact magic."""
    return head[: len(MAGIC)] == MAGIC

