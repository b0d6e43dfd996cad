"""The feed-forward block: relu² (modded-nanogpt), zero-initialised output projection."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc = CastedLinear(dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())
