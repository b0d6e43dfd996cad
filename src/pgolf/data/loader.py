"""The reference's training loader: one sequential token stream over the shards, wrapping forever.

Each step takes one contiguous chunk of ``(local_tokens + 1) * world_size`` tokens from the shared
stream and gives each rank its own span of it (the +1 makes the shifted targets), so 1 and 8
GPUs see exactly the same tokens per step. No sampling, no workers: deterministic by construction.
``state_dict()`` / ``load_state_dict()`` resume the stream where it was. :func:`build_loader` picks
this loader, a record's random-window loader (:mod:`pgolf.data.window_loader`) or R44's document
packing loader (:mod:`pgolf.data.packed_loader`) by PGOLF_LOADER.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.data.shards import check_token_range, read_shard, resolve_shards
from pgolf.errors import PgolfError


class TokenStream:
    def __init__(self, files: list[Path], vocab_size: int | None = None):
        if not files:
            raise PgolfError("no training shards given")
        self.files = files
        self.vocab_size = vocab_size
        self.file_idx = 0
        self.tokens = self._load(0)
        self.pos = 0

    def _load(self, idx: int) -> np.ndarray:
        tokens = read_shard(self.files[idx])
        if self.vocab_size is not None:
            check_token_range(tokens, self.vocab_size, str(self.files[idx]))
        return tokens

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = self._load(self.file_idx)
        self.pos = 0

    def state_dict(self) -> dict:
        return {"file_idx": self.file_idx, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        idx = int(state["file_idx"])
        if not 0 <= idx < len(self.files):
            raise PgolfError(f"loader state names shard {idx}, the data has {len(self.files)}")
        if idx != self.file_idx:
            self.tokens = self._load(idx)
            self.file_idx = idx
        self.pos = int(state["pos"])

    def take(self, n: int) -> np.ndarray:
        chunks = []
        remaining = n
        empty_files = 0
        while remaining > 0:
            avail = self.tokens.shape[0] - self.pos
            if avail <= 0:
                empty_files += 1
                if empty_files > len(self.files):
                    raise PgolfError("training shards contain no tokens")
                self._advance_file()
                continue
            empty_files = 0
            k = min(remaining, avail)
            chunks.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            remaining -= k
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def micro_batch_tokens(global_tokens: int, seq_len: int, micro_batches: int) -> int:
    """Tokens per rank and micro-step (``micro_batches``: ranks x accumulation steps); PgolfError
    unless a positive multiple of ``seq_len``."""
    local_tokens = global_tokens // micro_batches
    if local_tokens < seq_len or local_tokens % seq_len:
        raise PgolfError(
            f"TRAIN_BATCH_TOKENS={global_tokens} gives {local_tokens} tokens per rank micro-step, "
            f"which must be a positive multiple of TRAIN_SEQ_LEN={seq_len}"
        )
    return local_tokens


class DistributedTokenLoader:
    def __init__(self, pattern: str, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 vocab_size: int | None = None):
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.stream = TokenStream(resolve_shards(pattern, split="train"), vocab_size)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        local_tokens = micro_batch_tokens(global_tokens, seq_len, self.world_size * grad_accum_steps)
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = torch.from_numpy(chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64))
        x = local[:-1].reshape(-1, seq_len)
        y = local[1:].reshape(-1, seq_len)
        non_blocking = self.device.type == "cuda"
        return x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def build_loader(kind: str, pattern: str, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", vocab_size: int | None = None, bos_id: int = 1):
    """PGOLF_LOADER: ``sequential`` (the reference), ``coprime`` (R25), ``shuffled`` (R30) or
    ``doc_packed`` (R44, :mod:`pgolf.data.packed_loader`; ``bos_id`` only for it)."""
    if kind == "sequential":
        return DistributedTokenLoader(pattern, rank, world_size, device, vocab_size)
    if kind == "doc_packed":
        from pgolf.data.packed_loader import DocPackedLoader

        return DocPackedLoader(pattern, rank, world_size, device, vocab_size, bos_id)
    from pgolf.data.window_loader import WINDOW_ORDERS, WindowLoader

    if kind not in WINDOW_ORDERS:
        raise PgolfError(f"PGOLF_LOADER={kind!r}: expected sequential, coprime, shuffled or doc_packed")
    return WindowLoader(pattern, kind, seq_len, seed, rank, world_size, device, vocab_size)


def inputs_and_targets(rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``n + 1`` tokens as inputs (their first ``n``) and targets (their last ``n``) on ``device``
    (copied without waiting on a GPU)."""
    non_blocking = device.type == "cuda"
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    return x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
