"""Global gradient-norm clipping (GRAD_CLIP_NORM; 0.3 in the records from R09 on, off in the reference)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; 0 disables."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
