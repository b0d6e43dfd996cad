"""Building blocks shared by every block type: RMSNorm and fp32-master linear layers.

Rotary embeddings live in :mod:`pgolf.model.rope`.
"""

from __future__ import annotations

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

    def effective_weight(self) -> Tensor:
        """The fp32 weight the forward uses: fake-quantized while QAT is on."""
        return self.weight if self.weight_fake_quant is None else self.weight_fake_quant(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.effective_weight().to(x.dtype), bias)
