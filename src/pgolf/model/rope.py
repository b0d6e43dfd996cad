"""Rotary position embeddings: the reference's full RoPE, partial RoPE and the NTK base rescale.

* Partial RoPE (R20, PR #315): only the first ``rope_dims`` of each head are rotated; the rest
  carry no position at all, so attention on them is a pure content match.
* NTK-style base rescale (R13/R17/R18; the ``ROPE_YARN`` path of R44 is exactly this): when the
  sequence is longer than the length RoPE was trained at, ``base' = base * s^(d/(d-2))`` with
  ``s = seq_len / train_seq_len`` and ``d`` the rotated dims, so the lowest frequency stretches to
  the new length while the highest stays put. ``s`` follows the length of the call (training and
  the standard and sliding evaluations always call with their full window length, as R22/R35 pad
  theirs), unless :func:`ntk_length_pinned` fixes it: the LoRA TTT scores windows of many lengths,
  and a base that followed them (padded to a batch's longest, as it once was) made a document's
  score depend on its batch; it pins ``s`` to its configured window length instead, as R44 primes
  its cache at a configured length before TTT.
"""

from __future__ import annotations

from contextlib import contextmanager

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
        self.ntk_length = 0  # the length the base is rescaled for; 0: the length of each call
        self.register_buffer("inv_freq", inverse_frequencies(base, self.rope_dims), persistent=False)
        self._cache: tuple[int, int, torch.device, Tensor, Tensor] | None = None

    def _inv_freq_for(self, scale_len: int) -> Tensor:
        if self.ntk_train_seq_len and scale_len > self.ntk_train_seq_len:
            base = ntk_base(self.base, scale_len, self.ntk_train_seq_len, self.rope_dims)
            return inverse_frequencies(base, self.rope_dims).to(self.inv_freq.device)
        return self.inv_freq

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        scale_len = self.ntk_length or seq_len
        if self._cache is None or self._cache[:3] != (seq_len, scale_len, device):
            inv_freq = self._inv_freq_for(scale_len)
            t = torch.arange(seq_len, device=device, dtype=inv_freq.dtype)
            freqs = torch.outer(t, inv_freq.to(device))
            self._cache = (seq_len, scale_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        cos, sin = self._cache[3:]
        return cos.to(dtype=dtype), sin.to(dtype=dtype)


@contextmanager
def ntk_length_pinned(model: nn.Module, length: int):
    """Every :class:`Rotary` of ``model`` rescales its base for ``length`` whatever the length of
    a call (a no-op without ``ROPE_YARN``)."""
    rotaries = [m for m in model.modules() if isinstance(m, Rotary)]
    before = [r.ntk_length for r in rotaries]
    for r in rotaries:
        r.ntk_length = length
    try:
        yield
    finally:
        for r, length_before in zip(rotaries, before):
            r.ntk_length = length_before


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
