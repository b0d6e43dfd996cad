"""The per-token byte sidecar of a val set whose text was transformed before tokenizing (CaseOps).

``fineweb_val_bytes_NNNNNN.bin`` sits beside ``fineweb_val_NNNNNN.bin`` in the token shard layout
(256 x int32 header, then uint16 values), one value per token: the UTF-8 bytes of the original,
untransformed text that token spells (0 for BOS and for case operators). It is the layout the
CaseOps records' ``prepare_caseops_data.py`` writes and their ``eval_val`` reads; val_bpb then
charges target ``t`` (the token at stream position ``t + 1``) exactly its sidecar value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgolf.data.shards import SIDECAR_PREFIX, read_header, read_shard, write_shard
from pgolf.errors import PgolfError

VAL_PREFIX = "fineweb_val_"
BOS_ID = 1


def is_sidecar(path: str | Path) -> bool:
    return Path(path).name.startswith(SIDECAR_PREFIX)


def sidecar_path(val_shard: str | Path) -> Path | None:
    """The sidecar that belongs to a ``fineweb_val_NNNNNN.bin`` shard (None for any other name)."""
    val_shard = Path(val_shard)
    number = val_shard.name[len(VAL_PREFIX) : -len(".bin")]
    if val_shard.name.startswith(VAL_PREFIX) and val_shard.suffix == ".bin" and number.isdigit():
        return val_shard.with_name(f"{SIDECAR_PREFIX}{number}.bin")
    return None


def write_sidecar(val_shard: str | Path, counts: np.ndarray) -> Path:
    """Write the sidecar of ``val_shard`` (atomically); ``counts`` has one value per token of the shard."""
    path = sidecar_path(val_shard)
    if path is None:
        raise PgolfError(f"{val_shard}: only fineweb_val_NNNNNN.bin shards have a byte sidecar")
    write_shard(path, np.asarray(counts))
    return path


def sidecars_of(val_files: list[Path]) -> list[Path] | None:
    """The sidecar of every val shard, or None when none has one; some but not all is an error."""
    paths = [sidecar_path(f) for f in val_files]
    present = [p is not None and p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        lacking = val_files[present.index(False)]
        raise PgolfError(f"{lacking}: no byte sidecar {SIDECAR_PREFIX}*.bin, though other val shards have one")
    return paths


def load_sidecar_bytes(val_files: list[Path], tokens: np.ndarray) -> np.ndarray | None:
    """The original bytes of each token of ``tokens`` (the val shards' stream, or a prefix of it), int32; None without sidecars.

    Each sidecar must hold exactly as many values as its shard has tokens, and charge nothing to a BOS.
    """
    paths = sidecars_of(val_files)
    if paths is None:
        return None
    parts = []
    for shard, path in zip(val_files, paths):
        if read_header(path) != read_header(shard):
            raise PgolfError(f"{path}: {read_header(path)} byte counts for the {read_header(shard)} tokens of {shard}")
        parts.append(np.asarray(read_shard(path)))
    counts = np.concatenate(parts)[: tokens.shape[0]].astype(np.int32)
    charged_bos = (tokens[: counts.shape[0]] == BOS_ID) & (counts != 0)
    if charged_bos.any():
        pos = int(np.argmax(charged_bos))
        raise PgolfError(f"{paths[0].parent}: the byte sidecar charges {int(counts[pos])} bytes to the BOS at stream position {pos}")
    return counts
