"""Where an artifact's bytes go: per payload tensor and per group, summing exactly to the file size.

Attribution rule (exact by construction):

* ``header``: the 22-byte container header;
* the compressed body is split by *telescoping*: the compressed size of the payload prefix that
  ends at a boundary, minus that of the previous boundary. Boundaries are the end of the
  safetensors header (row ``metadata``: JSON + tensor table) and the end of each tensor's data in
  payload order. For zlib every tensor is a boundary (a compressor copy per tensor, linear time);
  for the other compressors, only group ends are (prefix re-compression is slow), and the tensors
  of a group share its bytes in proportion to their stored bytes, the rounding remainder going to
  the group's largest tensor. The last prefix is the whole payload, so the rows sum to the file.

A group is a tensor key's prefix before ``/`` (v2: role.part.layout, e.g. ``mlp.codes.int5``;
v1: ``values`` or ``scale``). A role (:func:`role_totals`) is the tensor's job in the model (embed,
head, attn, mlp, other) whatever its layout, plus ``container`` (header and metadata): the split
``pgolf quant inspect`` and ``pgolf report`` show for every artifact, the reference int8 one included.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.export.codecs import ZLIB_LEVEL, codec_by_id
from pgolf.export.container import HEADER_BYTES, read_artifact, unpack_container


@dataclass(frozen=True)
class ByteRow:
    """One attributed item: a tensor key (or header/metadata), its group, stored and file bytes."""

    key: str
    group: str
    stored_bytes: int
    file_bytes: int


def _tensor_spans(payload: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    (n,) = struct.unpack_from("<Q", payload)
    header = json.loads(payload[8 : 8 + n])
    spans = [(k, v["data_offsets"][0], v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    spans.sort(key=lambda s: s[1])
    return 8 + n, spans


def _zlib_prefix_sizes(payload: bytes, ends: list[int]) -> list[int]:
    c = zlib.compressobj(ZLIB_LEVEL)
    sizes, emitted, pos = [], 0, 0
    for end in ends:
        emitted += len(c.compress(payload[pos:end]))
        pos = end
        sizes.append(emitted + len(c.copy().flush()))
    return sizes


def attribute_bytes(path: str | os.PathLike[str]) -> list[ByteRow]:
    """Rows whose ``file_bytes`` sum to the artifact's size on disk (validates the artifact first)."""
    path = Path(path)
    read_artifact(path)
    blob = path.read_bytes()
    codec = codec_by_id(blob[9])
    payload = unpack_container(blob, str(path))
    shuffled = int.from_bytes(blob[10:18], "little") != len(payload)  # the header counts the shuffled stream
    if shuffled or payload[:4] in (b"QGv3", b"PGRP"):
        # the shares come from re-compressing prefixes of the safetensors payload as it is stored
        held = "a whole-stream byte shuffle" if shuffled else "a QGv3 payload" if payload[:4] == b"QGv3" else "per-group streams"
        raise PgolfError(f"{path}: byte attribution reads a plain safetensors payload only; this artifact holds {held}")
    data_start, spans = _tensor_spans(payload)
    group_of = {k: k.split("/", 1)[0] if "/" in k else k for k, _, _ in spans}
    per_tensor = codec.name == "zlib"
    boundaries = [("metadata", data_start)]
    for i, (k, _, end) in enumerate(spans):
        last_of_group = i + 1 == len(spans) or group_of[spans[i + 1][0]] != group_of[k]
        if per_tensor or last_of_group:
            boundaries.append((k if per_tensor else group_of[k], data_start + end))
    ends = [e for _, e in boundaries]
    sizes = _zlib_prefix_sizes(payload, ends) if per_tensor else [len(codec.compress(payload[:e])) for e in ends]
    if sizes[-1] != len(blob) - HEADER_BYTES:
        raise PgolfError(f"{path}: re-compressing the payload gives {sizes[-1]} bytes, the file holds {len(blob) - HEADER_BYTES}")
    shares = dict(zip([b for b, _ in boundaries], [s - p for s, p in zip(sizes, [0, *sizes[:-1]])]))
    rows = [ByteRow("header", "header", HEADER_BYTES, HEADER_BYTES), ByteRow("metadata", "metadata", data_start, shares["metadata"])]
    if per_tensor:
        rows += [ByteRow(k, group_of[k], e - s, shares[k]) for k, s, e in spans]
        return rows
    for group in dict.fromkeys(group_of[k] for k, _, _ in spans):
        members = [(k, e - s) for k, s, e in spans if group_of[k] == group]
        total_stored = sum(b for _, b in members) or 1
        split = [shares[group] * b // total_stored for _, b in members]
        biggest = max(range(len(members)), key=lambda i: members[i][1])
        split[biggest] += shares[group] - sum(split)
        rows += [ByteRow(k, group, b, f) for (k, b), f in zip(members, split)]
    return rows


def group_totals(rows: list[ByteRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.group] = out.get(r.group, 0) + r.file_bytes
    return out


CONTAINER_GROUP = "container"  # the header and the safetensors metadata


def role_totals(rows: list[ByteRow]) -> dict[str, int]:
    """File bytes per tensor role (:data:`pgolf.quant.policy.ROLES`) and :data:`CONTAINER_GROUP`; they sum to
    the file size. A v2 key starts with its role (``mlp.codes.int5/...``); a v1 key is ``values/<name>``
    or ``scale/<name>``, and the name decides."""
    from pgolf.quant.policy import ROLES, tensor_role

    out: dict[str, int] = {}
    for r in rows:
        prefix, _, name = r.key.partition("/")
        first = prefix.split(".", 1)[0]
        role = CONTAINER_GROUP if not name else first if first in ROLES else tensor_role(name)
        out[role] = out.get(role, 0) + r.file_bytes
    return out


def ordered_roles(totals: dict[str, int]) -> dict[str, int]:
    """Role totals in one fixed order (:data:`pgolf.quant.policy.ROLES`, then the container), as every verb shows them."""
    from pgolf.quant.policy import ROLES

    order = [*ROLES, CONTAINER_GROUP]
    return {role: totals[role] for role in sorted(totals, key=lambda r: order.index(r) if r in order else len(order))}
