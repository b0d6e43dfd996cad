"""Causal self-attention: GQA, RMSNorm on q and k, RoPE, a learnable per-head query gain."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.model.attn_backend import causal_attention
from pgolf.model.layers import CastedLinear, Rotary, apply_rotary


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, base=rope_base)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        bsz, seqlen, _ = x.shape
        return x.reshape(bsz, seqlen, n, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        bsz, seqlen, dim = x.shape
        q = F.rms_norm(self._heads(self.c_q(x), self.num_heads), (self.head_dim,))
        k = F.rms_norm(self._heads(self.c_k(x), self.num_kv_heads), (self.head_dim,))
        v = self._heads(self.c_v(x), self.num_kv_heads)
        cos, sin = self.rotary(seqlen, x.device, q.dtype)
        q = apply_rotary(q, cos, sin) * self.q_gain.to(dtype=q.dtype)[None, :, None, None]
        k = apply_rotary(k, cos, sin)
        y = causal_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(bsz, seqlen, dim))
