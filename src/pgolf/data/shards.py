"""The challenge's token shard format: read (memory-mapped), write (atomically) and resolve paths.

A shard is a 256 x int32 little-endian header ``[magic=20240520, version=1, num_tokens, 0...]``
followed by ``num_tokens`` little-endian uint16 token ids, so its size is exactly
``1024 + 2 * num_tokens`` bytes. This is the layout of ``fineweb_{train,val}_*.bin`` written by the
challenge's exporter and read by the reference ``train_gpt.py``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pgolf.errors import PgolfError
from pgolf.files import atomic_write, make_folder

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16
# Per-token byte sidecars (pgolf.data.sidecar) share the token layout and the fineweb_val_ prefix:
# they are never token shards, whatever glob matches them.
SIDECAR_PREFIX = "fineweb_val_bytes_"


def read_header(path: Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise PgolfError(f"{path}: truncated shard ({size} bytes, header needs {HEADER_BYTES})")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise PgolfError(f"{path}: bad shard magic {int(header[0])} (expected {SHARD_MAGIC})")
    if int(header[1]) != SHARD_VERSION:
        raise PgolfError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + TOKEN_DTYPE.itemsize * num_tokens
    if num_tokens < 0 or size != expected:
        raise PgolfError(
            f"{path}: shard size mismatch ({size} bytes on disk, header says {num_tokens} tokens = {expected} bytes)"
        )
    return num_tokens


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a shard's tokens as a read-only uint16 array (validated header and size)."""
    path = Path(path)
    num_tokens = read_header(path)
    if num_tokens == 0:
        return np.zeros((0,), dtype=np.uint16)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write tokens as a shard, atomically (temporary file, then rename)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise PgolfError(f"{path}: tokens must be one-dimensional, got shape {tokens.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= MAX_VOCAB):
        raise PgolfError(f"{path}: token ids must lie in [0, {MAX_VOCAB}) to fit uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    write_bytes_atomic(path, header.tobytes() + tokens.astype(TOKEN_DTYPE, copy=False).tobytes())


def token_shards_only(paths) -> list[Path]:
    """Sorted ``paths`` without byte sidecars."""
    return sorted(Path(p) for p in paths if not Path(p).name.startswith(SIDECAR_PREFIX))


def resolve_shards(spec: str | os.PathLike, split: str = "val") -> list[Path]:
    """Turn a file, a directory (``fineweb_{split}_*.bin`` inside) or a glob into sorted shard paths.

    A directory or a glob never yields a byte sidecar (``fineweb_val_bytes_*.bin``).
    """
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = token_shards_only(path.glob(f"fineweb_{split}_*.bin"))
        if not files:
            raise PgolfError(f"{path}: no fineweb_{split}_*.bin shards in this directory")
        return files
    if path.is_file():
        return [path]
    if glob.has_magic(text):
        files = token_shards_only(glob.glob(text))
        if not files:
            raise PgolfError(f"{text}: glob matched no files")
        return files
    raise PgolfError(f"{text}: no such file or directory")


def check_token_range(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    """Fail with the offending id and position if any token is >= vocab_size."""
    if tokens.size == 0:
        return
    top = int(tokens.max())
    if top >= vocab_size:
        pos = int(np.argmax(tokens >= vocab_size))
        raise PgolfError(f"{where}: token id {top} >= vocab size {vocab_size} (first at position {pos})")


def load_tokens(spec: str | os.PathLike, split: str = "val", vocab_size: int | None = None) -> np.ndarray:
    """Concatenate every shard of ``spec`` into one uint16 array, checking ids against vocab_size."""
    parts = []
    for file in resolve_shards(spec, split):
        tokens = read_shard(file)
        if vocab_size is not None:
            check_token_range(tokens, vocab_size, str(file))
        parts.append(tokens)
    if len(parts) == 1:
        return np.asarray(parts[0])
    return np.concatenate(parts)


def prepared_manifest(spec: str | os.PathLike) -> str | None:
    """The ``manifest.json`` that ``pgolf data prepare`` (so also ``pgolf demo``) wrote beside these shards, or None.

    Such shards hold whatever text it was given, with a val split of its own, not the challenge's
    FineWeb export, so a run on them is not comparable with the records. Its manifest is told apart
    from the challenge's (``OUT/manifest.json``, two folders above the shards) by its ``sources``.
    """
    path = Path(spec)
    manifest = (path if path.is_dir() else path.parent) / "manifest.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(manifest.resolve()) if isinstance(info, dict) and "sources" in info and "options" in info else None


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so a 200 MB shard never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a small file atomically (:func:`pgolf.files.atomic_write`), creating its folder."""
    path = Path(path)
    make_folder(path.parent)
    atomic_write(path, data)
