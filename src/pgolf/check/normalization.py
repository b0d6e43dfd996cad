"""The normalization check (C2): the model's scores come from a full distribution over the vocabulary.

At sampled positions the check takes the model's logits, verifies that the softmax sums to 1 over
the whole vocabulary, and that the per-token loss the evaluator charges equals ``-log p(target)``
under that same distribution, so no score is computed from an unnormalized "probability".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NormalizationReport:
    positions: int
    max_sum_error: float  # max |sum_v p(v) - 1|
    max_loss_error: float  # max |loss - (-log p(target))| in nats
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_sum_error <= self.tolerance and self.max_loss_error <= self.tolerance

    def as_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


@torch.no_grad()
def normalization_check(model, tokens: np.ndarray, seq_len: int, samples: int = 64, seed: int = 0,
                        tolerance: float = 1e-4, device: str | torch.device = "cpu") -> NormalizationReport:
    rng = np.random.default_rng(seed)
    n = tokens.shape[0] - 1
    length = min(seq_len, n)
    starts = rng.integers(0, n - length + 1, size=max(1, samples // length + 1))
    x = torch.stack([torch.from_numpy(tokens[s : s + length].astype(np.int64)) for s in starts]).to(device)
    y = torch.stack([torch.from_numpy(tokens[s + 1 : s + length + 1].astype(np.int64)) for s in starts]).to(device)
    logp = torch.log_softmax(model.logits(x).double(), dim=-1)
    losses = model(x, y, reduction="none").double()
    picked = torch.from_numpy(rng.integers(0, length, size=samples)).to(device)
    rows = torch.arange(samples, device=device) % x.shape[0]
    sums = logp[rows, picked].exp().sum(-1)
    charged = -logp[rows, picked, y[rows, picked]]
    return NormalizationReport(samples, float((sums - 1).abs().max()), float((losses[rows, picked] - charged).abs().max()), tolerance)
