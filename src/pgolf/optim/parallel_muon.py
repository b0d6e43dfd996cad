"""Parallel Muon (R22 / PR #399): Muon's matrices banked by shape and orthogonalised in shards.

R22 stores same-shaped weights as 3-D banks in the model; here the banks exist only inside the
optimizer (same-shaped gradients stacked at each step), so the model and its state_dict keys stay
as they are. Per bank of B matrices, padded to a multiple of the world size W:

1. gradients -> this rank's shard of B/W matrices: a reduce-scatter (mean) when the gradients are
   still per-rank (``reduce_grads=True``, R22's banks live outside DDP), or a plain slice when DDP
   already averaged them (pgolf's loop today);
2. Nesterov momentum, optional MuonEq-R row normalisation, and one batched Newton-Schulz on the
   shard (momentum buffers live only on the rank that owns the matrix);
3. an all-gather of the orthogonalised shards, then every rank applies every update.

The update equals plain :class:`pgolf.optim.muon.Muon`'s (tests compare them on 1 and 2 gloo ranks).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from pgolf.optim.muon import Muon, ns_coefficients, normalize_rows


def newton_schulz_batched(G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16,
                          schedule: str = "quintic") -> Tensor:
    """:func:`pgolf.optim.muon.newton_schulz` on a stack ``[n, rows, cols]``, each matrix normalised alone."""
    X = G.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    for a, b, c in ns_coefficients(schedule, steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if transposed else X


def _all_gather(output: Tensor, shard: Tensor) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, shard)


class ParallelMuon(Muon):
    """Muon with shape banks and sharded Newton-Schulz; ``reduce_grads`` if gradients are not yet averaged."""

    def __init__(self, params, *args, reduce_grads: bool = False, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.reduce_grads = reduce_grads

    @staticmethod
    def banks(params: list[Tensor]) -> list[list[Tensor]]:
        """Parameters grouped by shape, in order of first appearance (the same on every rank)."""
        by_shape: dict[tuple[int, ...], list[Tensor]] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        return list(by_shape.values())

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            for bank in self.banks(group["params"]):
                self._step_bank(bank, group, world, rank, distributed)
        return loss

    def _step_bank(self, bank: list[Tensor], group: dict, world: int, rank: int, distributed: bool) -> None:
        present = [p.grad is not None for p in bank]
        if not any(present):
            return
        shard_size = -(-len(bank) // world)
        owned = range(rank * shard_size, min((rank + 1) * shard_size, len(bank)))
        if distributed and self.reduce_grads:
            shard = torch.empty(shard_size, *bank[0].shape, device=bank[0].device, dtype=bank[0].dtype)
            dist.reduce_scatter_tensor(shard, self._stack_grads(bank, range(shard_size * world)), op=dist.ReduceOp.SUM)
            shard /= world
        else:  # gradients already identical on every rank: stack only the owned ones
            shard = self._stack_grads(bank, owned)
        updates = torch.zeros(shard_size, *bank[0].shape, device=bank[0].device, dtype=self.ns_dtype)
        nesterov_updates = []
        for j, i in enumerate(owned):
            if present[i]:
                nesterov_updates.append((j, self._nesterov(bank[i], shard[j], group)))
        if nesterov_updates:
            idx = [j for j, _ in nesterov_updates]
            stacked = torch.stack([u for _, u in nesterov_updates])
            if group["row_normalize"]:
                stacked = normalize_rows(stacked)
            ortho = newton_schulz_batched(stacked, group["backend_steps"], dtype=self.ns_dtype,
                                          schedule=group["ns_schedule"])
            rows, cols = bank[0].shape
            updates[idx] = ortho * max(1, rows / cols) ** 0.5
        if distributed:
            full = torch.empty(shard_size * world, *bank[0].shape, device=updates.device, dtype=updates.dtype)
            _all_gather(full, updates)
        else:
            full = updates
        decay = group["lr"] * group["weight_decay"] * group["wd_scale"]
        for i, p in enumerate(bank):
            if not present[i]:
                continue
            if decay != 0.0:
                p.mul_(1.0 - decay)
            p.add_(full[i].to(dtype=p.dtype), alpha=-group["lr"])

    @staticmethod
    def _stack_grads(bank: list[Tensor], indices: range) -> Tensor:
        """Gradients of ``bank[i]`` for i in ``indices``; zeros past the bank's end (padding) or without a grad."""
        out = torch.zeros(len(indices), *bank[0].shape, device=bank[0].device, dtype=bank[0].dtype)
        for j, i in enumerate(indices):
            if i < len(bank) and bank[i].grad is not None:
                out[j] = bank[i].grad
        return out

    def _nesterov(self, p: Tensor, g: Tensor, group: dict) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        return g.add(buf, alpha=group["momentum"]) if group["nesterov"] else g  # as the reference Muon
