"""Byte layouts that help compressors: N-bit packing of intN codes and byte shuffling of floats.

* :func:`pack_codes` maps symmetric codes ``c`` in ``[-qmax, qmax]`` to ``c + qmax`` and writes
  their low ``bits`` bits back to back (little-endian bit order), ``ceil(n * bits / 8)`` bytes.
* :func:`shuffle_bytes` stores a float tensor byte-plane by byte-plane (all first bytes, then all
  second bytes...), which groups the slowly varying exponent bytes together.

The inverses check lengths before allocating anything, so a hostile header cannot make them
allocate more than the bytes they were given.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import PgolfError


def packed_length(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """uint8 tensor of the codes' ``bits``-bit offsets, packed back to back."""
    qmax = (1 << (bits - 1)) - 1
    u = (codes.detach().cpu().numpy().astype(np.int16).ravel() + qmax).astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(u.copy())
    planes = np.unpackbits(u[:, None], axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(planes.ravel(), bitorder="little"))


def unpack_codes(packed: Tensor, bits: int, shape: tuple[int, ...], source: str) -> Tensor:
    """int8 codes of ``shape`` from :func:`pack_codes` output; PgolfError when sizes disagree."""
    n = 1
    for d in shape:
        n *= d
    if packed.dtype != torch.uint8 or packed.ndim != 1 or packed.numel() != packed_length(n, bits):
        raise PgolfError(f"{source}: packed int{bits} data of {packed.numel()} bytes does not hold shape {tuple(shape)}")
    qmax = (1 << (bits - 1)) - 1
    raw = packed.numpy()
    if bits == 8:
        u = raw.astype(np.int16)
    else:
        planes = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
        padded = np.zeros((n, 8), dtype=np.uint8)
        padded[:, :bits] = planes
        u = np.packbits(padded, axis=1, bitorder="little")[:, 0].astype(np.int16)
    return torch.from_numpy((u - qmax).astype(np.int8).reshape(shape))


def shuffle_bytes(t: Tensor) -> Tensor:
    """uint8 tensor holding ``t``'s bytes plane by plane."""
    item = t.element_size()
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).reshape(-1, item)
    return raw.t().contiguous().reshape(-1)


def unshuffle_bytes(stored: Tensor, dtype: torch.dtype, shape: tuple[int, ...], source: str) -> Tensor:
    """Inverse of :func:`shuffle_bytes`; PgolfError when the byte count does not fit."""
    item = torch.empty((), dtype=dtype).element_size()
    n = 1
    for d in shape:
        n *= d
    if stored.dtype != torch.uint8 or stored.ndim != 1 or stored.numel() != n * item:
        raise PgolfError(f"{source}: shuffled data of {stored.numel()} bytes does not hold {n} x {item}-byte values")
    planes = stored.reshape(item, n).t().contiguous().reshape(-1)
    return planes.view(dtype).reshape(shape).clone()


# Whole-stream byte shuffle, R35's framing: b"BSHF", the stride, then byte 0 of every stride-byte
# word, then byte 1, ... (a tail shorter than a word joins the planes it falls in). A pgolf payload
# cannot start with these bytes: a safetensors file starts with its header length, and one that
# starts so would claim a header of over 9 GB.
STREAM_SHUFFLE_MAGIC = b"BSHF"


def shuffle_stream(data: bytes, stride: int) -> bytes:
    """``data`` plane by plane with R35's ``BSHF`` framing (``stride`` < 2 or a shorter ``data``: as is)."""
    if stride <= 1 or len(data) < stride:
        return data
    src = np.frombuffer(data, dtype=np.uint8)
    return STREAM_SHUFFLE_MAGIC + bytes([stride]) + b"".join(src[pos::stride].tobytes() for pos in range(stride))


def unshuffle_stream(data: bytes) -> bytes:
    """Inverse of :func:`shuffle_stream`; data without the framing comes back unchanged."""
    if len(data) < 5 or data[:4] != STREAM_SHUFFLE_MAGIC:
        return data
    stride = data[4]
    body = np.frombuffer(data, dtype=np.uint8, offset=5)
    if stride < 2:
        return body.tobytes()
    out = np.empty(len(body), dtype=np.uint8)
    start = 0
    for pos in range(stride):
        plane = len(body) // stride + (1 if pos < len(body) % stride else 0)
        out[pos::stride] = body[start : start + plane]
        start += plane
    return out.tobytes()
