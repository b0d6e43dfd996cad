"""Gradient communication when Parallel Muon trains on several ranks (R22 / R44 scheme, no DDP).

With PGOLF_PARALLEL_MUON=1 under torchrun the model is not wrapped in DDP, so backward leaves every
gradient per-rank (micro-batches accumulate locally, nothing is reduced during backward). After the
last micro-batch :meth:`BankedGradSync.reduce`:

* launches :class:`~pgolf.optim.parallel_muon.ParallelMuon`'s async reduce-scatters: each rank
  receives only the averaged gradients of the bank matrices it orthogonalises, so Muon's
  gradients are never all-reduced;
* all-reduces (mean) every other gradient (embeddings, scalars, control tensors, an untied head)
  packed into one flat buffer per dtype, as R44's ``_all_reduce_packed_grads``, while the
  reduce-scatters are in flight; then waits for both.

:meth:`BankedGradSync.clip_average` is GRAD_CLIP_NORM on the averaged gradients: the replicated
gradients' norm² plus the all-reduced sum of the bank shards' norm² is the global norm of the
mean gradient, so ranks clip exactly as one process would. R22/R44 instead clip each rank's local
gradient before reducing (``clip_grad_norm_`` on the module, then the reduce-scatters and
all-reduces), which makes the step depend on the number of GPUs: PGOLF_GRAD_CLIP_LOCAL=1
(:func:`average_and_clip`) does that.

:func:`broadcast_parameters` replaces DDP's construction-time broadcast of rank 0's weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pgolf.config import OptimConfig
from pgolf.optim.clip import clip_gradients
from pgolf.optim.parallel_muon import ParallelMuon


@torch.no_grad()
def broadcast_parameters(module: nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers (what DDP does when it wraps a model)."""
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


class BankedGradSync:
    """Reduce-scatter for Muon's banks, one packed all-reduce for the rest, global-norm clip."""

    def __init__(self, muon: ParallelMuon, replicated: list[nn.Parameter]):
        if not muon.reduce_grads:
            raise ValueError("BankedGradSync needs a ParallelMuon with reduce_grads=True (per-rank gradients)")
        banked = {id(p) for g in muon.param_groups for p in g["params"]}
        if any(id(p) in banked for p in replicated):
            raise ValueError("a parameter is both banked in Parallel Muon and replicated")
        self.muon = muon
        self.replicated = list(replicated)

    def describe(self) -> str:
        banks = [b for g in self.muon.param_groups for b in self.muon.banks(g["params"])]
        banked = sum(p.numel() for b in banks for p in b)
        replicated = sum(p.numel() for p in self.replicated)
        return (f"grad_sync: no DDP; {len(banks)} Muon banks ({banked:,} params) reduce-scattered, "
                f"{len(self.replicated)} other tensors ({replicated:,} params) in one packed all-reduce")

    @torch.no_grad()
    def reduce(self) -> None:
        """Average every gradient over ranks: banks as owned shards, the rest in full."""
        self.muon.reduce_grad_shards()  # async reduce-scatters first: the biggest transfers
        grads = [p.grad for p in self.replicated if p.grad is not None]
        world = dist.get_world_size()
        pending = []
        for dtype in sorted({g.dtype for g in grads}, key=str):
            same = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in same])
            pending.append((same, flat, dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)))
        for same, flat, work in pending:
            work.wait()
            flat /= world
            offset = 0
            for g in same:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    @torch.no_grad()
    def clip_average(self, max_norm: float) -> None:
        """Scale the averaged gradients so their global L2 norm is at most ``max_norm`` (0 disables)."""
        if max_norm <= 0:
            return
        banks_sq = self.muon.grad_shard_sq_norm()
        dist.all_reduce(banks_sq, op=dist.ReduceOp.SUM)
        grads = [p.grad for p in self.replicated if p.grad is not None]
        replicated_sq = sum((g.float().square().sum() for g in grads), torch.zeros((), device=banks_sq.device))
        total = (banks_sq + replicated_sq).sqrt()
        factor = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
        for g in grads:
            g.mul_(factor.to(g.dtype))
        self.muon.scale_grad_shards(factor)


def replicated_parameters(model: nn.Module, muon: ParallelMuon) -> list[nn.Parameter]:
    """The trainable parameters Muon does not bank, in the model's order (the same on every rank)."""
    banked = {id(p) for g in muon.param_groups for p in g["params"]}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in banked]


def make_grad_sync(model: nn.Module, muon: ParallelMuon) -> BankedGradSync:
    return BankedGradSync(muon, replicated_parameters(model, muon))


def average_and_clip(params, grad_sync: BankedGradSync | None, o: OptimConfig) -> None:
    """The step's gradients averaged over ranks and clipped to GRAD_CLIP_NORM. ``grad_sync`` None: one
    process or DDP, the gradients are averaged already. PGOLF_GRAD_CLIP_LOCAL: each rank clips its own
    gradient first, then they are averaged (R22/R44's order under torchrun)."""
    if grad_sync is not None and not o.grad_clip_local:
        grad_sync.reduce()
        grad_sync.clip_average(o.grad_clip_norm)
        return
    clip_gradients(params, o.grad_clip_norm)
    if grad_sync is not None:
        grad_sync.reduce()
