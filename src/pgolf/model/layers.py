"""Building blocks shared by every block type: RMSNorm, fp32-master linear layers and rotary embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Weightless RMSNorm, as the reference (no learnable gain)."""

    def __init__(self, eps: float | None = None):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),), eps=self.eps)


class CastedLinear(nn.Linear):
    """Weights stay fp32 for the optimizer; the matmul runs in the activation dtype (bf16 on GPU).

    ``weight_fake_quant`` (None unless QAT is on, see pgolf.quant.qat) maps the fp32 weight to its
    straight-through fake-quantized value. It is an instance attribute, so torch.compile guards on
    it and recompiles when QAT switches on instead of constant-folding a class flag.
    """

    weight_fake_quant = None

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        w = self.weight if self.weight_fake_quant is None else self.weight_fake_quant(self.weight)
        return F.linear(x, w.to(x.dtype), bias)


class Rotary(nn.Module):
    """cos/sin tables for RoPE, cached per sequence length and device."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0] != seq_len or self._cache[1] != device:
            t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
            freqs = torch.outer(t, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[None, None], freqs.sin()[None, None])
        _, _, cos, sin = self._cache
        return cos.to(dtype=dtype), sin.to(dtype=dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the head dimension (the reference's half-split RoPE layout)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
