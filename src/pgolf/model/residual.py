"""Residual-stream wiring between blocks: U-Net skips (plain or sigmoid-gated) and parallel lanes.

* U-Net skips (reference): the decoder adds ``w_i * skip`` of the matching encoder layer.
* Sigmoid-gated skips (R27, from PR #1089): ``x = lerp(w_i * skip, x, sig(g_i))``, g zero-init.
* Two-lane parallel residuals (R26 PR #1204, R44; from modded-nanogpt #230): from a chosen layer
  on, attention reads lane 0 (mixed with x0 by ``resid_mix``) and the MLP reads lane 1; both
  outputs are written to both lanes through a learned 2x2 ``post_lambdas`` (init 1), each lane is
  scaled by its ``resid_lambdas`` (init 1.1), and the final hidden is the mean of the lanes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def merge_skip(x: Tensor, skip: Tensor, weight: Tensor, gate: Tensor | None) -> Tensor:
    """The decoder's input after adding one encoder skip (``x + w*skip`` when ungated)."""
    scaled = weight.to(dtype=x.dtype)[None, None, :] * skip
    if gate is None:
        return x + scaled
    return torch.lerp(scaled, x, torch.sigmoid(gate.to(dtype=x.dtype))[None, None, :])


LANE_ENDINGS = ("mean", "attn", "mlp")


def final_lane(lane0: Tensor, lane1: Tensor, ending: str) -> Tensor:
    """The hidden state after the last two-lane layer: one lane, or their mean."""
    if ending not in LANE_ENDINGS:
        raise ValueError(f"unknown final lane {ending!r}")
    if ending == "attn":
        return lane0
    if ending == "mlp":
        return lane1
    return 0.5 * (lane0 + lane1)


def parallel_lambdas(num_layers: int) -> tuple[nn.Parameter, nn.Parameter]:
    """(post_lambdas [L, 2, 2] init 1, resid_lambdas [L, 2] init 1.1)."""
    post = nn.Parameter(torch.ones(num_layers, 2, 2, dtype=torch.float32))
    resid = nn.Parameter(torch.full((num_layers, 2), 1.1, dtype=torch.float32))
    return post, resid
