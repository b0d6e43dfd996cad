"""Rotary position embeddings: the reference's full RoPE, partial RoPE and the NTK base rescale.

* Partial RoPE (R20, PR #315): only the first ``rope_dims`` of each head are rotated; the rest
  carry no position at all, so attention on them is a pure content match.
* NTK-style base rescale (R13/R17/R18; the ``ROPE_YARN`` path of R44 is exactly this): when the
  sequence is longer than the length RoPE was trained at, ``base' = base * s^(d/(d-2))`` with
  ``s = seq_len / train_seq_len`` and ``d`` the rotated dims, so the lowest frequency stretches to
  the new length while the highest stays put.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ntk_base(base: float, seq_len: int, train_seq_len: int, rope_dims: int) -> float:
    """The rescaled base for ``seq_len``; ``base`` itself up to the trained length."""
    if seq_len <= train_seq_len:
        return base
    return base * (seq_len / train_seq_len) ** (rope_dims / (rope_dims - 2))


def inverse_frequencies(base: float, rope_dims: int) -> Tensor:
    return 1.0 / (base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32) / rope_dims))


class Rotary(nn.Module):
    """cos/sin tables [1, 1, seq, rope_dims/2], cached per sequence length and device.

    ``rope_dims`` 0 means the whole head; ``ntk_train_seq_len`` 0 means no rescale.
    """

    def __init__(self, dim: int, base: float = 10000.0, rope_dims: int = 0, ntk_train_seq_len: int = 0):
        super().__init__()
        self.base = base
        self.rope_dims = rope_dims or dim
        self.ntk_train_seq_len = ntk_train_seq_len
        self.register_buffer("inv_freq", inverse_frequencies(base, self.rope_dims), persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def _inv_freq_for(self, seq_len: int) -> Tensor:
        if self.ntk_train_seq_len and seq_len > self.ntk_train_seq_len:
            base = ntk_base(self.base, seq_len, self.ntk_train_seq_len, self.rope_dims)
            return inverse_frequencies(base, self.rope_dims).to(self.inv_freq.device)
        return self.inv_freq

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            inv_freq = self._inv_freq_for(seq_len)
            t = torch.arange(seq_len, device=device, dtype=inv_freq.dtype)
            freqs = torch.outer(t, inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        _, _, cos, sin = self._cache
        return cos.to(dtype=dtype), sin.to(dtype=dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the rotated dims (the reference's half-split RoPE layout).

    When the tables cover fewer dims than the head (partial RoPE), the tail passes through.
    """
    rope_dims = 2 * cos.size(-1)
    if rope_dims < x.size(-1):
        return torch.cat((apply_rotary(x[..., :rope_dims], cos, sin), x[..., rope_dims:]), dim=-1)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
