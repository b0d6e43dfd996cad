"""R44's document packing loader (``PGOLF_LOADER=doc_packed``): one packed row per rank micro-step.

Each call reads the next ``(local_tokens + 1) * world_size`` tokens of the current shard in order
and gives rank r the r-th span of ``local_tokens + 1`` (``local_tokens = TRAIN_BATCH_TOKENS /
(ranks x accumulation steps)``), as one row ``[1, local_tokens]`` of inputs and its shifted
targets: no cut into ``TRAIN_SEQ_LEN`` rows, so a document crossing where a row edge would be keeps
its context. Attention is cut by the model instead, at every BOS and every ``PGOLF_MAX_DOC_LEN``
tokens from a document's start (:func:`pgolf.model.attn_backend.segment_starts`, R44's
``_build_cu_seqlens``): the row must go through document-isolated attention (config validation
says so).

As R44's ``DocumentPackingLoader``: a shard's reading starts at its first BOS; a shard whose rest
cannot hold the whole step's span is left for the next one (the rest is never read), and the files
wrap around. Each span's last token is only a target (the next span starts after it). A shard
without a BOS is refused (R44 would fail on it too). ``state_dict()`` is the shard and cursor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.data.shards import check_token_range, read_shard, resolve_shards
from pgolf.data.loader import inputs_and_targets
from pgolf.errors import PgolfError


class DocPackedLoader:
    """Same interface as :class:`pgolf.data.loader.DistributedTokenLoader`; batches are ``[1, local_tokens]``."""

    def __init__(self, pattern: str, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 vocab_size: int | None = None, bos_id: int = 1):
        self.files: list[Path] = resolve_shards(pattern, split="train")
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.vocab_size, self.bos_id = vocab_size, bos_id
        self._open(0)

    def _open(self, idx: int) -> None:
        tokens = read_shard(self.files[idx])
        if self.vocab_size is not None:
            check_token_range(tokens, self.vocab_size, str(self.files[idx]))
        bos = np.flatnonzero(tokens == self.bos_id)
        if not bos.size:
            raise PgolfError(f"{self.files[idx]}: no BOS token ({self.bos_id}); PGOLF_LOADER=doc_packed reads from a shard's first BOS")
        self.file_idx, self.tokens, self.cursor = idx, tokens, int(bos[0])

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        local_tokens = global_tokens // (self.world_size * grad_accum_steps)
        if local_tokens < 1:
            raise PgolfError(f"TRAIN_BATCH_TOKENS={global_tokens} gives no token per rank micro-step")
        span = local_tokens + 1
        step_span = span * self.world_size
        for _ in range(len(self.files) + 1):
            if self.cursor + step_span <= self.tokens.shape[0]:
                break
            self._open((self.file_idx + 1) % len(self.files))  # the rest of this shard is skipped, as R44
        else:
            raise PgolfError(f"no training shard holds {step_span:,} tokens after its first BOS (one step of PGOLF_LOADER=doc_packed)")
        start = self.cursor + self.rank * span
        local = torch.from_numpy(np.asarray(self.tokens[start : start + span]).astype(np.int64))
        self.cursor += step_span
        return inputs_and_targets(local[None], self.device)

    def state_dict(self) -> dict:
        return {"file_idx": self.file_idx, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        idx = int(state["file_idx"])
        if not 0 <= idx < len(self.files):
            raise PgolfError(f"loader state names shard {idx}, the data has {len(self.files)}")
        self._open(idx)
        self.cursor = int(state["cursor"])
