"""R44's per-group serialization (``PGOLF_SERIALIZER=pergroup``): int8 codes grouped by role across
the blocks, some groups' rows similarity-sorted, every matrix transposed, each group compressed alone.

R44 (PR #1855, from PR #1586) found that codes of one role in every block compress better together,
and better still column by column with alike rows next to each other. Payload layout (little-endian)::

    b"PGRP", u32 stream count (9), u32 length of each stream, then the streams:
    0-6  the seven code groups of :data:`ROLE_GROUPS`, in that order: the int8 codes of the group's
         members one after another (by block index); a matrix's rows put in similarity order
         (:func:`similarity_order`) in the groups of :data:`SORTED_GROUPS`, then transposed; compressed
         alone by the configured compressor (R44: ``lrzip-zpaq``, ``lrzip -z -L 9``); empty when
         the state has no such tensor
    7    brotli (quality 11, window 2^24) of a v2 safetensors payload (pgolf.export.container) with
         every other tensor, the entries (a grouped entry's values record is ``raw`` under the key
         ``pergroup/<name>``, with its shape: the reader puts the codes there), the caller's meta and
         ``"pergroup": {"codecs": [...]}``, the compressor id of each group
    8    brotli (quality 11) of the row orders, uint16, sorted group after sorted group; or empty

Framing, group order, member order, row orders, transposition and the compressed group streams are
R44's (``_serialize_pergroup``) byte for byte when the compressor is ``lrzip-zpaq``; stream 7 is
pgolf's safetensors remainder (no pickle) instead of R44's ``torch.save`` of ``{"r", "m", "s"}``.
A member is a tensor named ``tok_emb.weight`` or ``blocks.<i>.<role>`` with a role of a group,
stored as int8 codes (intN or per-row int8); any other tensor, int8 gates included, stays in the
remainder, as in R44. The container around the payload stores it as it is (compressor ``stored``).

Costs, as measured on a 2-core CPU: ZPAQ at level 9 takes about 1.6 s a stream before any data and
then a few hundred KB/s each way (the groups run side by side); lrzip's LZ4 pre-test stores data it
finds incompressible as it is, without ZPAQ (R44's bytes all the same).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import brotli
import numpy as np
import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.export.codecs import STORED_CODEC, Codec, brotli_decompress_capped, codec_by_id, codec_named, compress_best
from pgolf.quant.int8 import KIND_PASSTHROUGH, QuantEntry, QuantizedState

PGRP_MAGIC = b"PGRP"
# R44's groups in stream order: "_name" is one tensor outside the blocks, "role" that role in every block
ROLE_GROUPS = ("_tok_emb.weight.q", "attn.c_k.weight.q", "attn.c_q.weight.q", "attn.c_v.weight.q",
          "attn.proj.weight.q", "mlp.fc.weight.q", "mlp.proj.weight.q")
SORTED_GROUPS = frozenset({"_tok_emb.weight.q", "attn.c_q.weight.q", "mlp.fc.weight.q"})  # rows similarity-sorted
STREAMS = len(ROLE_GROUPS) + 2  # the groups, the remainder, the row orders
MAX_SORTED_ROWS = 1 << 16  # row orders are uint16
_MAX_BYTES = 256 * 1024 * 1024  # no stream of a real artifact inflates anywhere near this


# -- the row order ----------------------------------------------------------------------------------


def similarity_order(codes: np.ndarray) -> np.ndarray:
    """R44's greedy chain: row 0 first, then repeatedly the unused row nearest (L1) to the last one,
    ties to the lowest row index. uint16 (R44 stores it so).

    R44 sums the distances in float32, exact for integers below 2^24; int8 rows give at most 255 a
    column, so int32 sums are the same numbers for any row under 65,793 columns (checked). Removing a
    used row swaps the last one into its place, so no step copies the matrix."""
    rows = np.asarray(codes)
    n, cols = rows.shape
    if n > MAX_SORTED_ROWS or cols * 255 >= 1 << 24:
        raise PgolfError(f"similarity sort: a {n} x {cols} matrix does not fit R44's uint16 orders / exact sums")
    rows = rows.astype(np.int16)  # |a - b| <= 255 fits
    order = np.zeros(n, dtype=np.uint16)
    rest, ids = rows[1:].copy(), np.arange(1, n)
    cur = rows[0]
    for i in range(1, n):
        live = n - i
        dist = np.abs(rest[:live] - cur).sum(axis=1, dtype=np.int32)
        near = np.flatnonzero(dist == dist.min())
        k = near[np.argmin(ids[near])]
        order[i], cur = ids[k], rows[ids[k]]
        rest[k], ids[k] = rest[live - 1], ids[live - 1]
    return order


# -- routing and the group bytes --------------------------------------------------------------------


def group_of(name: str) -> tuple[str, int] | None:
    """(group, block index) of a tensor name as R44 routes its ``<name>.q``; None outside every group."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        key, index = ".".join(parts[2:]) + ".q", int(parts[1])
    else:
        key, index = f"_{name}.q", 0
    return (key, index) if key in ROLE_GROUPS else None


def _groupable(e: QuantEntry) -> bool:
    return e.kind != KIND_PASSTHROUGH and e.values.dtype == torch.int8 and group_of(e.name) is not None


def members(q: QuantizedState) -> dict[str, list[QuantEntry]]:
    """Group -> its entries by block index (a group outside the blocks has one)."""
    out: dict[str, list[tuple[int, QuantEntry]]] = {}
    for e in q:
        if _groupable(e):
            group, index = group_of(e.name)
            out.setdefault(group, []).append((index, e))
    return {g: [e for _, e in sorted(found, key=lambda x: x[0])] for g, found in out.items()}


def group_bytes(group: str, entries: list[QuantEntry]) -> tuple[bytes, list[np.ndarray]]:
    """The raw bytes of one group (before compression) and the row orders its matrices used."""
    parts, orders = [], []
    for e in entries:
        arr = e.values.detach().cpu().numpy()
        if arr.ndim == 2:
            if group in SORTED_GROUPS:
                order = similarity_order(arr)
                orders.append(order)
                arr = arr[order]
            arr = np.ascontiguousarray(arr.T)
        parts.append(arr.tobytes())
    return b"".join(parts), orders


def pack_streams(streams: list[bytes]) -> bytes:
    return PGRP_MAGIC + struct.pack(f"<I{len(streams)}I", len(streams), *map(len, streams)) + b"".join(streams)


def unpack_streams(blob: bytes, source: str, what: str = "R44's format") -> list[bytes]:
    """The streams of a ``PGRP`` pack: magic, count (u32), each length (u32), the streams."""
    if len(blob) < 8 or blob[:4] != PGRP_MAGIC:
        raise PgolfError(f"{source}: truncated PGRP header")
    (count,) = struct.unpack_from("<I", blob, 4)
    if count != STREAMS:
        raise PgolfError(f"{source}: PGRP holds {count} streams, {what} has {STREAMS}")
    lengths = struct.unpack_from(f"<{count}I", blob, 8) if len(blob) >= 8 + 4 * count else None
    if lengths is None or 8 + 4 * count + sum(lengths) != len(blob):
        raise PgolfError(f"{source}: PGRP stream lengths do not add up to the file's {len(blob)} bytes")
    streams, pos = [], 8 + 4 * count
    for length in lengths:
        streams.append(blob[pos:pos + length])
        pos += length
    return streams


def ungroup(raw: bytes, group: str, shapes, perms: np.ndarray, perm_at: int, source: str):
    """The int8 code tensors of one group (transposed back, rows put back in place); the next
    offset into the row orders."""
    codes = np.frombuffer(raw, dtype=np.int8)
    if codes.size != sum(math.prod(s) for s in shapes):
        raise PgolfError(f"{source}: PGRP group {group!r} holds {codes.size} codes, its shapes {sum(map(math.prod, shapes))}")
    out, offset = [], 0
    for shape in shapes:
        chunk = codes[offset:offset + math.prod(shape)]
        offset += chunk.size
        if len(shape) == 2:
            rows, cols = shape
            chunk = chunk.reshape(cols, rows).T
            if group in SORTED_GROUPS:
                order = perms[perm_at:perm_at + rows]
                perm_at += rows
                if order.size != rows or not np.array_equal(np.sort(order), np.arange(rows)):
                    raise PgolfError(f"{source}: PGRP group {group!r} has no valid row permutation")
                inverse = np.empty_like(order)
                inverse[order] = np.arange(rows, dtype=order.dtype)
                chunk = chunk[inverse]
        out.append(torch.from_numpy(np.array(chunk.reshape(shape), order="C")))  # a copy: the stream is read-only
    return out, perm_at


# -- the payload ------------------------------------------------------------------------------------


def _each(fn, groups: list[str]) -> dict:
    """group -> fn(group), the groups side by side: each lrzip runs as its own process (R44
    decompresses its groups so; ZPAQ is slow and single-stream)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
        return dict(zip(groups, pool.map(fn, groups)))


def _compress_group(raw: bytes, codec: str) -> tuple[int, bytes]:
    if codec == "auto":  # the smallest of the auto candidates, group by group
        c, body = compress_best(raw)
        return c.codec_id, body
    c = codec_named(codec)
    return c.codec_id, c.compress(raw)


HELD = "pergroup/"  # the key prefix of a grouped entry's codes in the remainder's records


def _remainder(q: QuantizedState, extra_meta: dict[str, Any], held: frozenset[str], codecs: list[int], shuffle: bool) -> bytes:
    """The v2 payload (container.encode_payload's layout) of everything but the grouped codes.

    Its own loop rather than a switch in the container's encoder, so that no other serializer's
    bundle ships this one's case."""
    from pgolf.export.container import SCHEMA_V2, _dump_doc, _lqer_spec, _save, _stored_part, entry_spec

    specs, tensors = [], {}
    for e in q:
        spec = entry_spec(e)
        for part, t in (("values", e.values), ("scale", e.scale)):
            if part == "values" and e.name in held:
                spec["tensors"][part] = {"key": HELD + e.name, "layout": "raw", "shape": list(t.shape)}
            elif t is not None:
                key, stored, layout = _stored_part(e, part, t, shuffle, False)
                tensors[key] = stored
                spec["tensors"][part] = {"key": key, **layout}
        if e.lqer is not None:
            spec["lqer"] = _lqer_spec(e, tensors)
        specs.append(spec)
    doc = {"schema": SCHEMA_V2, "entries": specs, "meta": extra_meta, "pergroup": {"codecs": codecs}}
    return _save(tensors, _dump_doc(doc))


def encode_pergroup(q: QuantizedState, extra_meta: dict[str, Any], codec: str, *, shuffle: bool = False) -> bytes:
    """The per-group payload of ``q``, each group compressed by ``codec`` (a name or ``auto``)."""
    grouped = members(q)
    streams, orders, codecs = [], [], []
    raws = {}
    for group in ROLE_GROUPS:
        if group in grouped:
            raws[group], used = group_bytes(group, grouped[group])
            orders += used
    packed = _each(lambda group: _compress_group(raws[group], codec), list(raws))
    for group in ROLE_GROUPS:  # no codes: an empty stream, "stored"
        codec_id, body = packed.get(group) or (STORED_CODEC.codec_id, b"")
        streams.append(body)
        codecs.append(codec_id)
    held = frozenset(e.name for found in grouped.values() for e in found)
    rest = _remainder(q, extra_meta, held, codecs, shuffle)
    streams.append(brotli.compress(rest, quality=11, lgwin=24))
    perm_bytes = b"".join(o.astype("<u2").tobytes() for o in orders)
    streams.append(brotli.compress(perm_bytes, quality=11) if perm_bytes else b"")
    return pack_streams(streams)


def _held_shapes(doc: dict, source: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Group -> (name, shape) of its members, from the remainder's entries whose values are held."""
    from pgolf.export.container import _shape_of

    found: dict[str, list[tuple[int, str, tuple[int, ...]]]] = {}
    for spec in doc["entries"]:
        values = spec.get("tensors", {}).get("values") if isinstance(spec, dict) and isinstance(spec.get("tensors"), dict) else None
        if not isinstance(values, dict) or not str(values.get("key", "")).startswith(HELD):
            continue
        name = spec.get("name")
        where = group_of(name) if isinstance(name, str) and values["key"] == HELD + name else None
        if where is None:
            raise PgolfError(f"{source}: tensor {str(name)[:80]!r} is held in a group, but names none")
        found.setdefault(where[0], []).append((where[1], name, _shape_of(values, name, source)))
    out = {}
    for group, items in found.items():
        items.sort(key=lambda x: x[0])
        if len({i for i, _, _ in items}) != len(items):
            raise PgolfError(f"{source}: PGRP group {group!r} lists a block twice")
        out[group] = [(name, shape) for _, name, shape in items]
    return out


def _group_codec(codec_id: object, expected: str | None) -> Codec | None:
    """The compressor of a group with this id, or None; with ``expected`` (the name a run reading its own
    artifact knows: a literal in a bundle, which then ships that decompressor alone) only that one or
    ``stored`` (an empty group's)."""
    if not isinstance(codec_id, int):
        return None
    if expected is None:
        return codec_by_id(codec_id)
    if codec_id == STORED_CODEC.codec_id:
        return STORED_CODEC
    c = codec_named(expected)
    return c if c.codec_id == codec_id else None


def decode_pergroup(payload: bytes, source: str, group_codec: str | None = None) -> tuple[QuantizedState, dict[str, Any]]:
    """Inverse of :func:`encode_pergroup`; PgolfError naming ``source`` for any defect (``group_codec``:
    every group must name that compressor or ``stored``)."""
    from pgolf.export.container import _read_metadata

    streams = unpack_streams(payload, source, "pgolf's per-group payload")
    n = len(ROLE_GROUPS)
    rest = brotli_decompress_capped(streams[n], _MAX_BYTES, source)
    doc = _read_metadata(rest, source)
    codecs = doc.get("pergroup", {}).get("codecs") if isinstance(doc.get("pergroup"), dict) else None
    if not isinstance(codecs, list) or len(codecs) != n or not all(_group_codec(c, group_codec) for c in codecs):
        raise PgolfError(f"{source}: per-group metadata lacks a known compressor for each of its {n} groups")
    perm_bytes = brotli_decompress_capped(streams[n + 1], _MAX_BYTES, source) if streams[n + 1] else b""
    if len(perm_bytes) % 2:
        raise PgolfError(f"{source}: PGRP row orders have an odd byte count")
    perms, perm_at = np.frombuffer(perm_bytes, dtype="<u2"), 0
    shapes = _held_shapes(doc, source)
    held: dict[str, Tensor] = {}
    for group, stream in zip(ROLE_GROUPS, streams):
        if bool(stream) != bool(shapes.get(group)):
            raise PgolfError(f"{source}: PGRP group {group!r} has {'codes' if stream else 'no codes'} but "
                             f"{len(shapes.get(group, []))} members")
    at = {g: i for i, g in enumerate(ROLE_GROUPS) if streams[i]}
    # the exact inflated size of each group is its cap
    raws = _each(lambda g: _group_codec(codecs[at[g]], group_codec).decompress(
        streams[at[g]], sum(math.prod(s) for _, s in shapes[g]), source), list(at))
    for group in at:
        listed = shapes[group]
        tensors, perm_at = ungroup(raws[group], group, [s for _, s in listed], perms, perm_at, source)
        held.update(zip((name for name, _ in listed), tensors))
    if perm_at != perms.size:
        raise PgolfError(f"{source}: PGRP row orders hold {perms.size} rows, the sorted groups use {perm_at}")
    return _remainder_state(rest, doc, held, source)


def _remainder_state(rest: bytes, doc: dict, held: dict[str, Tensor], source: str) -> tuple[QuantizedState, dict[str, Any]]:
    """The state the remainder's entries describe, the grouped codes put under their keys (as
    container.decode_payload reads a v2 payload: a reader of its own, so that no other serializer's
    bundle ships this one's case)."""
    from pgolf.export.container import SCHEMA_V2, _entry_from_v2, _load_tensors, state_of_entries

    if doc["schema"] != SCHEMA_V2:
        raise PgolfError(f"{source}: per-group remainder is not a {SCHEMA_V2!r} payload")
    tensors, used = _load_tensors(rest, source), set()
    if any(k.startswith(HELD) for k in tensors):
        raise PgolfError(f"{source}: per-group remainder stores a tensor under a grouped key")
    tensors.update((HELD + name, t) for name, t in held.items())
    entries = [_entry_from_v2(spec, tensors, used, source) for spec in doc["entries"]]
    return state_of_entries(entries, tensors, used, source), doc["meta"]
