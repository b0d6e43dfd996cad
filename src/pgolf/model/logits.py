"""Logit caps and the z-loss.

* ``tanh`` (reference): ``c * tanh(z / c)``.
* ``poly`` (R23, ``SOFTCAP_TYPE=poly``): the odd degree-5 polynomial ``c * clamp(u (1 - u^2/3 + u^4/15), -1, 1)``
  with ``u = clamp(z / c, -2, 2)``; it fuses under torch.compile where tanh does not.
* z-loss (R23, weight 1e-4 there): ``mean(logsumexp(logits)^2)``, keeps the log-partition near 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

SOFTCAPS = ("tanh", "poly")


def softcap(logits: Tensor, cap: float, kind: str = "tanh") -> Tensor:
    if kind == "tanh":
        return cap * torch.tanh(logits / cap)
    if kind not in SOFTCAPS:
        raise ValueError(f"unknown softcap {kind!r}")
    u = torch.clamp(logits / cap, -2.0, 2.0)
    u2 = u * u
    return cap * torch.clamp(u * (1.0 - u2 / 3.0 + u2 * u2 / 15.0), -1.0, 1.0)


def z_loss(logits: Tensor) -> Tensor:
    return torch.logsumexp(logits.float(), dim=-1).square().mean()
