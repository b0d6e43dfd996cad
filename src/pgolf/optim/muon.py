"""Muon: momentum SGD whose update for each matrix is orthogonalised by a Newton-Schulz iteration.

As in the reference (from modded-nanogpt): Nesterov momentum, 5 quintic Newton-Schulz steps with
coefficients (3.4445, -4.7750, 2.0315) run in bf16 on the Frobenius-normalised update, tall
matrices transposed, the result scaled by ``sqrt(max(1, rows/cols))``. Under torch.distributed each
rank orthogonalises every ``world_size``-th matrix and one all-reduce of a flat bf16 buffer shares
the updates, so every rank applies the same step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximately orthogonalise a 2-D matrix (its singular values pushed towards 1)."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; ``ns_dtype`` is bf16 as the reference (float64 for exactness tests)."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov))
        self.ns_dtype = ns_dtype
        self.orthogonalize = newton_schulz

    def _update(self, p: Tensor, group: dict) -> Tensor:
        g = p.grad
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        if group["nesterov"]:
            g = g.add(buf, alpha=group["momentum"])
        update = self.orthogonalize(g, steps=group["backend_steps"], dtype=self.ns_dtype)
        return update * max(1, update.size(0) / update.size(1)) ** 0.5

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=self.ns_dtype)
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    flat[offset : offset + p.numel()] = self._update(p, group).reshape(-1)
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(dtype=p.dtype), alpha=-group["lr"])
                offset += p.numel()
        return loss
