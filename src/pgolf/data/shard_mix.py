"""R25's coprime-stride loader schedule (PR #726): every batch mixes windows from several shards.

Per global batch of ``g`` windows, with ``progress = min(batches_built / 1800, 1)``:

1. each eligible shard (one with at least one ``seq_len + 1`` window) gets the weight
   ``remaining ** a`` with ``a = 0.9 - 0.4 * progress``; ``remaining`` is the windows left in its
   current pass (at least 1), or its whole window count before it is first used;
2. ``m = round(8 + progress * (64 - 8))`` shards (capped by the shard count and ``g``) are drawn
   without replacement with those probabilities; each gets one window plus a multinomial share of
   the other ``g - m`` in proportion to its probability;
3. each shard's windows continue its coprime walk (:class:`pgolf.data.window_loader.ShardPass`:
   a random phase, then blocks ``(start + k * stride) mod count``; a drained shard starts a new
   pass with a new phase, start and stride), are shuffled, and the shards' lists are interleaved
   round-robin in a random order per round, so a batch's shards are spread through it.

Early batches draw from few shards, weighted towards the fullest; later ones from many, more evenly.

Differences from R25, each so that the data does not depend on the number of GPUs (the union of the
ranks' windows of a step equals the single-process step, as for pgolf's other loaders):

* the mixed batch is one optimizer step's global batch (``world * accum`` micro-batches, rank r
  taking the r-th block of each micro-batch's share); R25 mixes each micro-batch's windows over
  the ranks, which is the same at its 8 GPUs x 1 micro-batch, and counts progress in micro-batches;
* 8 -> 64 shards per batch are R25's values at WORLD_SIZE=8 (it used ``max(8, W) -> max(32, 8W)``);
* SEED drives everything (R25 hashed the shard file names); each pass's phase, start and stride
  come from a generator keyed by (seed, shard, pass) rather than from the shared one.

``state_dict()`` holds per-shard pass counters, the generator state and the windows of the current
step not yet handed out: loading it resumes the exact continuation.
"""

from __future__ import annotations

import numpy as np

from pgolf.data.window_loader import ShardPass
from pgolf.errors import PgolfError

PROGRESS_BATCHES = 1800  # batches over which the schedule goes from its start to its end
EXPONENT_START, EXPONENT_END = 0.9, 0.5
SHARDS_START, SHARDS_END = 8, 64


def mix_schedule(batches_built: int) -> tuple[float, float]:
    """(progress in [0, 1], weight exponent) after ``batches_built`` batches."""
    progress = min(batches_built / PROGRESS_BATCHES, 1.0)
    return progress, EXPONENT_START - (EXPONENT_START - EXPONENT_END) * progress


def shards_per_batch(progress: float, eligible: int, batch_windows: int) -> int:
    """How many shards a batch mixes: 8 -> 64 with progress, at most the shards and the windows."""
    low = min(SHARDS_START, eligible, batch_windows)
    high = min(SHARDS_END, eligible, batch_windows)
    return max(1, min(int(round(low + progress * (high - low))), eligible, batch_windows))


def shard_probabilities(remaining: np.ndarray, exponent: float) -> np.ndarray:
    weights = np.power(remaining, exponent)
    total = float(weights.sum())
    if not np.isfinite(total) or total <= 0.0:
        return np.full(remaining.size, 1.0 / remaining.size)
    return weights / total


class ShardMixStream:
    """The seeded, rank-independent stream of (shard, start) windows, mixed per global batch."""

    def __init__(self, token_counts: list[int], seq_len: int, seed: int):
        self.counts, self.seq_len, self.seed = list(token_counts), seq_len, seed
        self.eligible = [i for i, n in enumerate(self.counts) if (n - 1) // seq_len > 0]
        if not self.eligible:
            raise PgolfError(f"training shards hold no window of {seq_len + 1} tokens")
        self.rng = np.random.Generator(np.random.PCG64([seed, 2 << 20]))
        self.epochs = [0] * len(self.counts)
        self.taken = [0] * len(self.counts)
        self.touched = [False] * len(self.counts)
        self.batches_built = 0
        self.pending: list[tuple[int, int]] = []  # windows of the current step not yet handed out
        self._passes: dict[int, ShardPass] = {}

    def _pass(self, shard: int) -> ShardPass:
        p = self._passes.get(shard)
        if p is None or p.epoch != self.epochs[shard]:
            p = ShardPass("coprime", self.counts[shard], self.seq_len, self.seed, shard, self.epochs[shard])
            self._passes[shard] = p
        return p

    def take(self, n: int, batch_windows: int) -> list[tuple[int, int]]:
        """The next ``n`` windows; a new mixed batch of ``batch_windows`` is drawn whenever one is used up."""
        while len(self.pending) < n:
            self.pending.extend(self.mixed_batch(batch_windows))
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def take_from_shard(self, shard: int, count: int) -> list[tuple[int, int]]:
        """``count`` windows continuing the shard's coprime walk, into new passes as needed."""
        out = []
        self.touched[shard] = True
        for _ in range(count):
            if self.taken[shard] >= self._pass(shard).count:
                self.epochs[shard] += 1
                self.taken[shard] = 0
            out.append((shard, self._pass(shard).window_start(self.taken[shard])))
            self.taken[shard] += 1
        return out

    def _remaining(self) -> np.ndarray:
        rem = []
        for s in self.eligible:
            if self.touched[s]:
                rem.append(max(self._pass(s).count - self.taken[s], 1))
            else:
                rem.append((self.counts[s] - 1) // self.seq_len)
        return np.array(rem, dtype=np.float64)

    def mixed_batch(self, g: int) -> list[tuple[int, int]]:
        progress, exponent = mix_schedule(self.batches_built)
        probs = shard_probabilities(self._remaining(), exponent)
        m = shards_per_batch(progress, len(self.eligible), g)
        chosen = self.rng.choice(len(self.eligible), size=m, replace=False, p=probs)
        counts = np.ones(m, dtype=np.int64)
        if g > m:
            counts += self.rng.multinomial(g - m, probs[chosen] / probs[chosen].sum())
        order = self.rng.permutation(m)
        buckets = []
        for i in order.tolist():
            windows = self.take_from_shard(self.eligible[int(chosen[i])], int(counts[i]))
            if len(windows) > 1:
                windows = [windows[k] for k in self.rng.permutation(len(windows)).tolist()]
            buckets.append(windows)
        self.batches_built += 1
        return self._interleave(buckets)

    def _interleave(self, buckets: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
        """Round-robin over the shards' lists, in a fresh random order each round."""
        out: list[tuple[int, int]] = []
        active = list(range(len(buckets)))
        while active:
            still = []
            for k in self.rng.permutation(len(active)).tolist():
                bucket = buckets[active[k]]
                out.append(bucket.pop())
                if bucket:
                    still.append(active[k])
            active = still
        return out

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs), "taken": list(self.taken), "touched": list(self.touched),
                "batches_built": self.batches_built, "pending": [list(w) for w in self.pending],
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if len(state["epochs"]) != len(self.counts):
            raise PgolfError(f"loader state has {len(state['epochs'])} shards, the data has {len(self.counts)}")
        self.epochs = [int(e) for e in state["epochs"]]
        self.taken = [int(t) for t in state["taken"]]
        self.touched = [bool(t) for t in state["touched"]]
        self.batches_built = int(state["batches_built"])
        self.pending = [(int(s), int(p)) for s, p in state["pending"]]
        self.rng.bit_generator.state = state["rng"]
