"""The feed-forward block and its activations; the output projection starts at zero.

* ``relu2``: relu(x)^2, the reference (from modded-nanogpt).
* ``leaky_relu2``: leaky_relu(x, slope)^2 with slope 0.5 (R22, PR #493): negative inputs keep a
  gradient, and the square keeps the output non-negative.
* ``swiglu``: silu(a) * b with ``fc`` producing both halves (2 x hidden rows), the LLaMA MLP.
  ``fc.row_blocks = 2`` says that this one tensor is two matrices (gate, then up): orthogonal init
  and Muon treat each half as a matrix of its own, as the records' separate ``gate`` and ``up``.

With ``FUSED_MLP=1`` a relu2 / leaky_relu2 MLP becomes a :class:`pgolf.model.fused.FusedMLP`,
whose training forward is one fused Triton op (:mod:`pgolf.kernels.mlp`); evaluation keeps this code.

The width is ``ModelConfig.hidden_size``: MLP_HIDDEN when set, else MLP_MULT x MODEL_DIM
(R07/R08 3x, R27 4x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear

ACTIVATIONS = ("relu2", "leaky_relu2", "swiglu")


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "relu2", negative_slope: float = 0.5):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown MLP activation {activation!r}")
        self.activation = activation
        self.negative_slope = negative_slope
        fc_out = 2 * hidden if activation == "swiglu" else hidden
        self.fc = CastedLinear(dim, fc_out, bias=False)
        if activation == "swiglu":
            self.fc.row_blocks = 2
        self.proj = CastedLinear(hidden, dim, bias=False)
        self.proj._zero_init = True

    def act(self, h: Tensor) -> Tensor:
        if self.activation == "relu2":
            return torch.relu(h).square()
        if self.activation == "leaky_relu2":
            return F.leaky_relu(h, self.negative_slope).square()
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))
