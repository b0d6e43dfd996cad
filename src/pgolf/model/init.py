"""Record initialisations, applied after the reference's own (normal tied embedding, zero out-projections).

* Orthogonal init (R15, R19): every non-zero-init linear layer with both sides >= 64 gets
  ``orthogonal_``; those named ``proj`` (attention and MLP outputs, when not zero-init) are then
  scaled by ``1/sqrt(2 L)`` (muP-style, R19). Zero-init projections stay zero. A layer with
  ``row_blocks`` > 1 (the fused SwiGLU ``fc``) gets one orthogonal matrix per row block, as the
  records' separate gate and up projections (PR #1090).
* Overtone init (R11): the token embedding keeps its singular vectors and its top singular
  value, and the spectrum is reshaped to ``S_k = S_1 * k^-0.5``; ``resid_mix`` starts on a
  sigmoid schedule over depth (early layers lean on x0, late ones on the residual stream).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def orthogonal_init_(model: nn.Module, num_layers: int) -> None:
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or getattr(module, "_zero_init", False):
            continue
        blocks = module.weight.chunk(getattr(module, "row_blocks", 1), dim=0)
        if min(blocks[0].shape) < 64:
            continue
        for block in blocks:
            nn.init.orthogonal_(block)
        if name.endswith(".proj") or name == "proj":
            module.weight.mul_(1.0 / math.sqrt(2 * num_layers))


@torch.no_grad()
def overtone_embedding_(weight: Tensor) -> None:
    """Reshape the embedding's singular values to a k^-0.5 power law, in place."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    k = torch.arange(1, s.numel() + 1, dtype=s.dtype)
    weight.copy_(((u * (s[0] * k.pow(-0.5))[None, :]) @ vh).to(weight.dtype))


@torch.no_grad()
def phased_resid_mix_(blocks: nn.ModuleList) -> None:
    """resid_mix = (p, 1 - p) with p = sigmoid(3 (i/(L-1) - 0.5)) for block i (R11)."""
    last = max(len(blocks) - 1, 1)
    for i, block in enumerate(blocks):
        phase = torch.sigmoid(torch.tensor(3.0 * (i / last - 0.5)))
        block.resid_mix[0].fill_(phase.item())
        block.resid_mix[1].fill_(1.0 - phase.item())
