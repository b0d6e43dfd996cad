"""R44's calibration loader (``PGOLF_GPTQ_CALIBRATION_LOADER=shuffled``): random windows, dealt per rank.

R44 collects its GPTQ Hessians on batches of its ``ShuffledSequenceLoader`` (R30's, PR #1394), built
fresh after training. Unlike pgolf's training loaders it depends on the rank and the world size, and
on nothing else (no SEED):

* rank r reads only the shards ``files[r::world_size]``, and draws everything from one generator,
  ``PCG64(r)``;
* each shard gets, in file order, a random phase in ``[0, seq_len)`` and a random permutation of its
  ``(n - 1 - phase) // seq_len`` whole windows of ``seq_len + 1`` tokens; its windows are taken from
  the end of that permuted list;
* each batch row picks its shard with probability proportional to the windows the shard has left
  (``Generator.choice`` with those probabilities); when every shard is drained, all get a new phase
  and permutation, in file order, from the same generator.

A batch is ``global_tokens // (world_size * grad_accum_steps) // seq_len`` rows, as R44 divides.
Where R44 would fail (a rank without shards, no window in any shard) this refuses in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.data.shards import check_token_range, read_header, read_shard, resolve_shards
from pgolf.data.loader import inputs_and_targets
from pgolf.data.window_loader import window_rows
from pgolf.errors import PgolfError


class RankShuffledLoader:
    """Same ``next_batch`` as :class:`pgolf.data.loader.DistributedTokenLoader`; a fresh one per calibration."""

    def __init__(self, pattern: str, seq_len: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", vocab_size: int | None = None):
        files = resolve_shards(pattern, split="train")
        self.files: list[Path] = files[rank::world_size]
        if not self.files:
            raise PgolfError(f"{len(files)} training shard(s) for {world_size} ranks: rank {rank} gets none "
                             "(PGOLF_GPTQ_CALIBRATION_LOADER=shuffled deals shards rank::world_size)")
        self.seq_len, self.world_size, self.device, self.vocab_size = seq_len, world_size, torch.device(device), vocab_size
        self.rng = np.random.Generator(np.random.PCG64(rank))
        self.counts = [read_header(f) for f in self.files]
        self.starts = [self._new_pass(n) for n in self.counts]
        if not any(self.starts):
            raise PgolfError(f"rank {rank}'s training shards hold no window of {seq_len + 1} tokens")
        self._maps: dict[int, np.ndarray] = {}

    def _new_pass(self, num_tokens: int) -> list[int]:
        """One shard's window starts for a pass, in the order they are popped (from the end)."""
        seq_len = self.seq_len
        max_phase = min(seq_len - 1, max(0, num_tokens - seq_len - 1))
        phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0  # no draw for a one-window shard
        count = max((num_tokens - 1 - phase) // seq_len, 0)
        return (phase + self.rng.permutation(count) * seq_len).tolist()

    def _tokens(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = read_shard(self.files[shard])
        return self._maps[shard]

    def _next_window(self, remaining: np.ndarray) -> tuple[int, int]:
        if remaining.sum() <= 0:  # every shard drained: all start a new pass, in file order
            self.starts = [self._new_pass(n) for n in self.counts]
            remaining[:] = [len(s) for s in self.starts]
        shard = int(self.rng.choice(len(self.files), p=remaining / remaining.sum()))
        remaining[shard] -= 1
        return shard, self.starts[shard].pop()

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len != self.seq_len:
            raise PgolfError(f"TRAIN_SEQ_LEN={seq_len}: this loader was built for windows of {self.seq_len} tokens")
        rows = global_tokens // (self.world_size * grad_accum_steps) // seq_len
        if rows < 1:
            raise PgolfError(f"TRAIN_BATCH_TOKENS={global_tokens} gives no {seq_len}-token row per rank micro-step")
        remaining = np.array([len(s) for s in self.starts], dtype=np.float64)
        windows = [self._next_window(remaining) for _ in range(rows)]
        batch = window_rows(self._tokens, windows, seq_len)
        if self.vocab_size is not None:
            check_token_range(batch, self.vocab_size, f"training shards ({self.files[0].parent})")
        return inputs_and_targets(torch.from_numpy(batch), self.device)
