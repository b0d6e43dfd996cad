"""Weight averages that replace the trained weights for export and scoring (challenge.md sec. 2.3).

* :class:`EMA` (R18, EMA_DECAY 0.997; R43 0.9965): fp32 shadow of every state_dict tensor,
  ``ema = d * ema + (1 - d) * w`` after every optimizer step.
* :class:`SWA` (R19 / R21): a uniform average of snapshots taken every SWA_EVERY steps while the
  LR scale is below SWA_START_FRAC (0.5 in R19; 0.2 is R21's "tight" SWA). Summed in fp32.

Both average floating-point entries only (an integer buffer, e.g. a step counter, keeps its
current value) and hand back a full state_dict in the model's dtypes, ready for ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _floats(model: nn.Module) -> dict[str, Tensor]:
    return {name: t for name, t in model.state_dict().items() if t.is_floating_point()}


def _cast_like(averaged: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    current = model.state_dict()
    out = {name: t.detach().clone() for name, t in current.items() if name not in averaged}
    out.update({name: t.to(dtype=current[name].dtype, device=current[name].device) for name, t in averaged.items()})
    return out


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must lie in (0, 1)")
        self.decay = decay
        self.shadow = {name: t.detach().float().clone() for name, t in _floats(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, lr_scale: float) -> None:
        for name, t in _floats(model).items():
            self.shadow[name].mul_(self.decay).add_(t.detach().float(), alpha=1.0 - self.decay)

    def averaged_state(self, model: nn.Module) -> dict[str, Tensor] | None:
        return _cast_like(self.shadow, model)

    def describe(self) -> str:
        return f"ema decay {self.decay}"


class SWA:
    def __init__(self, every: int, start_lr_scale: float):
        if every <= 0:
            raise ValueError(f"SWA_EVERY={every} must be positive")
        self.every = every
        self.start_lr_scale = start_lr_scale
        self.total: dict[str, Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, lr_scale: float) -> None:
        if lr_scale >= self.start_lr_scale or step % self.every != 0:
            return
        state = _floats(model)
        if self.total is None:
            self.total = {name: t.detach().float().clone() for name, t in state.items()}
        else:
            for name, t in state.items():
                self.total[name].add_(t.detach().float())
        self.count += 1

    def averaged_state(self, model: nn.Module) -> dict[str, Tensor] | None:
        """The mean of the snapshots, or None when none was taken (the trained weights stay)."""
        if self.total is None:
            return None
        return _cast_like({name: t / self.count for name, t in self.total.items()}, model)

    def describe(self) -> str:
        return f"swa over {self.count} snapshots"


def build_averager(ema_decay: float, swa_enabled: bool, swa_every: int, swa_start_frac: float, model: nn.Module):
    """The configured weight average, or None (the reference: export the trained weights)."""
    if ema_decay > 0:
        return EMA(model, ema_decay)
    if swa_enabled:
        return SWA(swa_every, swa_start_frac)
    return None
