"""Record training loaders that sample ``seq_len + 1``-token windows from the shards at random.

Two window orders within a shard, both starting each pass over a shard ("epoch") at a random phase
in ``[0, seq_len)`` so window boundaries move between passes, with ``bc = (n - 1 - phase) // seq_len``
windows per pass:

* ``coprime`` (R25 / PR #726): window k of the pass is block ``(start + k * stride) mod bc`` with a
  random start and a random stride coprime with ``bc``, so every block is visited once per pass, in
  a scattered order, without storing a permutation. Which shards feed each batch follows R25's
  shard-mixing schedule (:mod:`pgolf.data.shard_mix`: 8 -> 64 shards per batch, weights
  ``remaining ** (0.9 -> 0.5)``).
* ``shuffled`` (R30 / PR #1394): window k is block ``perm[k]`` of a random permutation; each
  window's shard is drawn with probability proportional to the windows that shard has left, so
  shards drain together; when all are drained every shard starts a new pass (as R30).

Difference from the records, on purpose: the records seed per rank (R30: shards ``rank::world``,
RNG seeded by the rank) or mix per micro-batch over the ranks (R25), so their token streams depend
on the number of GPUs. Here one seeded window stream is shared by all ranks: each call consumes
``world_size * n`` windows and rank r takes the r-th block of n, exactly as the reference's
sequential loader slices its token stream. So the union over ranks of a step's tokens equals the
single-process step's tokens, for any world size that divides 8.

Everything random derives from SEED: the shard choice from one generator, each shard pass's phase
and order from a generator keyed by (seed, shard, pass). ``state_dict()`` is a few integers per
shard plus the generator state, and ``load_state_dict`` resumes the exact continuation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pgolf.data.loader import inputs_and_targets, micro_batch_tokens
from pgolf.data.shards import check_token_range, read_header, read_shard, resolve_shards
from pgolf.errors import PgolfError

WINDOW_ORDERS = ("coprime", "shuffled")


class ShardPass:
    """One pass over one shard: its phase, window count and the order of its windows."""

    def __init__(self, order: str, num_tokens: int, seq_len: int, seed: int, shard: int, epoch: int):
        rng = np.random.Generator(np.random.PCG64([seed, shard, epoch]))
        self.epoch = epoch
        max_phase = min(seq_len - 1, max(0, num_tokens - seq_len - 1))
        self.phase = int(rng.integers(max_phase + 1)) if max_phase > 0 else 0
        self.count = max((num_tokens - 1 - self.phase) // seq_len, 0)
        self.seq_len = seq_len
        if order == "coprime":
            self.start = int(rng.integers(self.count)) if self.count > 1 else 0
            self.stride = coprime_stride(self.count, rng)
            self.perm = None
        else:
            self.perm = rng.permutation(self.count).astype(np.int32)  # int32: half the memory over many shards

    def block(self, k: int) -> int:
        if self.perm is not None:
            return int(self.perm[k])
        return (self.start + k * self.stride) % self.count

    def window_start(self, k: int) -> int:
        return self.phase + self.block(k) * self.seq_len


def coprime_stride(n: int, rng: np.random.Generator) -> int:
    """A random stride in [1, n) with gcd(stride, n) = 1 (1 when n <= 2)."""
    if n <= 2:
        return 1
    while True:
        s = int(rng.integers(1, n))
        if math.gcd(s, n) == 1:
            return s


class WindowStream:
    """The seeded, rank-independent stream of (shard, start) windows."""

    def __init__(self, order: str, token_counts: list[int], seq_len: int, seed: int):
        if order not in WINDOW_ORDERS:
            raise PgolfError(f"window order {order!r}: expected one of {', '.join(WINDOW_ORDERS)}")
        self.order, self.counts, self.seq_len, self.seed = order, list(token_counts), seq_len, seed
        self.choice_rng = np.random.Generator(np.random.PCG64([seed, 1 << 20]))
        self.epochs = [0] * len(self.counts)
        self.taken = [0] * len(self.counts)
        self._passes: dict[int, ShardPass] = {}
        if all(self._pass(i).count == 0 for i in range(len(self.counts))):
            raise PgolfError(f"training shards hold no window of {seq_len + 1} tokens")

    def _pass(self, shard: int) -> ShardPass:
        p = self._passes.get(shard)
        if p is None or p.epoch != self.epochs[shard]:
            p = ShardPass(self.order, self.counts[shard], self.seq_len, self.seed, shard, self.epochs[shard])
            self._passes[shard] = p
        return p

    def _remaining(self) -> np.ndarray:
        return np.array([self._pass(i).count - self.taken[i] for i in range(len(self.counts))], dtype=np.float64)

    def take(self, n: int, batch_windows: int = 0) -> list[tuple[int, int]]:
        """The next ``n`` windows, drawn one at a time (``batch_windows`` only matters to R25's mixed batches)."""
        out = []
        remaining = self._remaining()
        for _ in range(n):
            if remaining.sum() <= 0:  # every shard drained: all start a new pass
                self.epochs = [e + 1 for e in self.epochs]
                self.taken = [0] * len(self.counts)
                remaining = self._remaining()
            cdf = np.cumsum(remaining)
            shard = min(int(np.searchsorted(cdf, self.choice_rng.random() * cdf[-1], side="right")), len(cdf) - 1)
            while remaining[shard] <= 0:  # float edge at a boundary: step to the next shard with windows
                shard = (shard + 1) % len(cdf)
            out.append((shard, self._pass(shard).window_start(self.taken[shard])))
            self.taken[shard] += 1
            remaining[shard] -= 1
        return out

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs), "taken": list(self.taken), "rng": self.choice_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if len(state["epochs"]) != len(self.counts) or len(state["taken"]) != len(self.counts):
            raise PgolfError(f"loader state has {len(state['epochs'])} shards, the data has {len(self.counts)}")
        self.epochs, self.taken = [int(e) for e in state["epochs"]], [int(t) for t in state["taken"]]
        self.choice_rng.bit_generator.state = state["rng"]


class WindowLoader:
    """Batches of random windows; same interface as :class:`pgolf.data.loader.DistributedTokenLoader`."""

    def __init__(self, pattern: str, order: str, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", vocab_size: int | None = None):
        self.files: list[Path] = resolve_shards(pattern, split="train")
        self.rank, self.world_size, self.seq_len = rank, world_size, seq_len
        self.device = torch.device(device)
        self.vocab_size = vocab_size
        counts = [read_header(f) for f in self.files]
        if order == "coprime":
            from pgolf.data.shard_mix import ShardMixStream  # imports ShardPass from here

            self.stream: WindowStream | ShardMixStream = ShardMixStream(counts, seq_len, seed)
        else:
            self.stream = WindowStream(order, counts, seq_len, seed)
        self._maps: dict[int, np.ndarray] = {}

    def _tokens(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = read_shard(self.files[shard])
        return self._maps[shard]

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        local_tokens = micro_batch_tokens(global_tokens, self.seq_len, self.world_size * grad_accum_steps)
        if seq_len != self.seq_len:
            raise PgolfError(f"TRAIN_SEQ_LEN={seq_len}: this loader was built for windows of {self.seq_len} tokens")
        n = local_tokens // seq_len
        step_windows = n * self.world_size * grad_accum_steps  # one optimizer step, summed over ranks
        windows = self.stream.take(n * self.world_size, step_windows)[self.rank * n : (self.rank + 1) * n]
        rows = window_rows(self._tokens, windows, seq_len)
        if self.vocab_size is not None:
            check_token_range(rows, self.vocab_size, f"training shards ({self.files[windows[0][0]].parent})")
        return inputs_and_targets(torch.from_numpy(rows), self.device)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def window_rows(tokens_of, windows: list[tuple[int, int]], seq_len: int) -> np.ndarray:
    """The int64 rows of ``seq_len + 1`` tokens at ``(shard, position)`` ``windows`` (``tokens_of(shard)``:
    that shard's tokens)."""
    return np.stack([np.asarray(tokens_of(s)[p : p + seq_len + 1]) for s, p in windows]).astype(np.int64)
