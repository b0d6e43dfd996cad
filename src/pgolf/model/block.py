"""One transformer block: mix with the embedding stream x0, then scaled attention and MLP residuals.

Block-level record options: LN scale (R20, PR #315: the normed inputs of attention and MLP are
multiplied by ``1/sqrt(layer+1)``), the GPT-J parallel form (R31: attention and MLP both read the
same normed input, ``x + a*Attn(n(x)) + m*MLP(n(x))``) and the two-lane step of parallel
residuals (:meth:`Block.forward_lanes`; the lambdas live on the GPT, see ``residual.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pgolf.model.attention import AttentionInputs, AttentionOptions, CausalSelfAttention
from pgolf.model.layers import RMSNorm
from pgolf.model.mlp import MLP


class Block(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, mlp_hidden: int, rope_base: float, qk_gain_init: float,
        *, attention: AttentionOptions | None = None, activation: str = "relu2", negative_slope: float = 0.5,
        ln_scale: float = 1.0, gptj_parallel: bool = False,
    ):
        super().__init__()
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(dim, num_heads, num_kv_heads, rope_base, qk_gain_init, attention)
        self.mlp = MLP(dim, mlp_hidden, activation, negative_slope)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # resid_mix[0] weighs the running stream, resid_mix[1] the embedding x0 (starts as identity).
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())
        self.ln_scale = ln_scale
        self.gptj_parallel = gptj_parallel

    @staticmethod
    def ln_scale_for(layer: int) -> float:
        return 1.0 / math.sqrt(layer + 1)

    def _norm(self, norm: RMSNorm, x: Tensor) -> Tensor:
        # Multiplying by exactly 1.0 would still be an op; skip it so the reference stays bit-identical.
        return norm(x) if self.ln_scale == 1.0 else norm(x) * self.ln_scale

    @staticmethod
    def _scaled(scale: Tensor, y: Tensor, stream: Tensor) -> Tensor:
        """``scale * y`` with the scale cast to the residual stream's dtype, as the reference."""
        return scale.to(dtype=stream.dtype)[None, None, :] * y

    def _mix(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(dtype=x.dtype)
        return mix[0][None, None, :] * x + mix[1][None, None, :] * x0

    def forward(self, x: Tensor, x0: Tensor, inputs: AttentionInputs | None = None) -> Tensor:
        x = self._mix(x, x0)
        if self.gptj_parallel:
            n = self._norm(self.attn_norm, x)
            return x + self._scaled(self.attn_scale, self.attn(n, inputs), x) + self._scaled(self.mlp_scale, self.mlp(n), x)
        x = x + self._scaled(self.attn_scale, self.attn(self._norm(self.attn_norm, x), inputs), x)
        x = x + self._scaled(self.mlp_scale, self.mlp(self._norm(self.mlp_norm, x)), x)
        return x

    def forward_lanes(
        self, lane0: Tensor, lane1: Tensor, x0: Tensor, post: Tensor, resid: Tensor,
        inputs: AttentionInputs | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Two-lane step: attention reads lane 0 (mixed with x0), the MLP reads lane 1.

        ``post`` [2, 2]: row 0 writes the attention output to (lane 0, lane 1), row 1 the MLP
        output; ``resid`` [2] scales the lanes.
        """
        attn_in = self._norm(self.attn_norm, self._mix(lane0, x0))
        attn_out = self._scaled(self.attn_scale, self.attn(attn_in, inputs), lane0)
        mlp_out = self._scaled(self.mlp_scale, self.mlp(self._norm(self.mlp_norm, lane1)), lane1)
        post, resid = post.to(lane0.dtype), resid.to(lane0.dtype)
        new0 = resid[0] * lane0 + post[0, 0] * attn_out + post[1, 0] * mlp_out
        new1 = resid[1] * lane1 + post[0, 1] * attn_out + post[1, 1] * mlp_out
        return new0, new1
