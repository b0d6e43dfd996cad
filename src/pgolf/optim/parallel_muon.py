"""Parallel Muon (R22 / PR #399): Muon's matrices banked by shape and orthogonalised in shards.

R22 stores same-shaped weights as 3-D banks in the model; here the banks exist only inside the
optimizer (same-shaped gradients stacked at each step), so the model and its state_dict keys stay
as they are. Per bank of B matrices, padded to a multiple of the world size W:

1. gradients -> this rank's shard of B/W matrices: a reduce-scatter (mean) when the gradients are
   still per-rank (``reduce_grads=True``: the training loop keeps the banks out of DDP, see
   :mod:`pgolf.optim.grad_sync`), or a plain slice when they are already averaged;
2. Nesterov momentum, optional MuonEq-R row normalisation, and one batched Newton-Schulz on the
   shard, with R22 / R44's rounding order ``c * (A @ A)`` (momentum buffers live only on the rank
   that owns the matrix);
3. an all-gather of the orthogonalised shards, then every rank applies every update, the
   ``sqrt(max(1, rows/cols))`` scale folded into the step size as R22 does (``alpha=-lr*scale``),
   so the bf16 update is not rounded a second time by the scaling.

With ``grad_dtype=torch.bfloat16`` the stacked gradients (and so the reduce-scatter and the
momentum) are bf16, as R22 / R44's ``padded_grad`` and ``shard_mom`` buffers.

Phase 1 can run ahead of :meth:`ParallelMuon.step`: :meth:`ParallelMuon.reduce_grad_shards`
launches every bank's reduce-scatter asynchronously (the caller overlaps the small all-reduce of
the other gradients with them), and the global gradient-norm clip can then scale the averaged
shards (:meth:`grad_shard_sq_norm`, :meth:`scale_grad_shards`) before the step consumes them.

After :meth:`ParallelMuon.keep_momentum_outside_state` (PGOLF_MUON_KEEP_WARMUP_MOMENTUM with per-rank
gradients) the momentum buffers live outside the optimizer state, as R44's ``shard_mom`` under
torchrun: ``state_dict()`` / ``load_state_dict()``, and so the compile warm-up's restore, leave them
as they are (on one process R44's momentum is optimizer state, restored with it; so is pgolf's).

The update equals plain :class:`pgolf.optim.muon.Muon`'s up to that rounding (tests compare them on
1 and 2 gloo ranks; tests/optim/test_record_optimizers.py compares both with R22's and R44's own optimizers).
Reductions are SUM then divide by W, not ``ReduceOp.AVG``: gloo has no AVG, and one formula keeps
NCCL and the gloo CPU tests numerically alike. gloo implements ``reduce_scatter_tensor`` (torch >= 2.x),
so there is no separate CPU path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from pgolf.optim.muon import Muon, newton_schulz, normalize_rows


class _BankShard:
    """One bank's gradient shard on this rank, with its pending reduce-scatter (if any)."""

    def __init__(self, bank: list[Tensor], group: dict, shard: Tensor, owned: range, work=None, world: int = 1,
                 sent: Tensor | None = None):
        self.bank, self.group, self.shard, self.owned, self.work, self.world = bank, group, shard, owned, work, world
        self.sent = sent  # the stacked gradients being reduce-scattered: kept alive until the transfer ends

    def wait(self) -> Tensor:
        if self.work is not None:
            self.work.wait()
            self.work, self.sent = None, None
            self.shard /= self.world
        return self.shard


class ParallelMuon(Muon):
    """Muon with shape banks and sharded Newton-Schulz; ``reduce_grads`` if gradients are not yet averaged."""

    def __init__(self, params, *args, reduce_grads: bool = False, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.reduce_grads = reduce_grads
        self.momentum_outside_state = False
        self._shards: list[_BankShard] | None = None

    def keep_momentum_outside_state(self) -> None:
        """From now on the momentum lives outside the optimizer state (R44's ``shard_mom`` under torchrun)."""
        self.momentum_outside_state = True
        self._outside: dict[Tensor, dict] = {}  # parameter -> its momentum

    @staticmethod
    def banks(params: list[Tensor]) -> list[list[Tensor]]:
        """Parameters grouped by shape, in order of first appearance (the same on every rank)."""
        by_shape: dict[tuple[int, ...], list[Tensor]] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        return list(by_shape.values())

    @staticmethod
    def _world() -> tuple[bool, int, int]:
        distributed = dist.is_available() and dist.is_initialized()
        return distributed, (dist.get_world_size() if distributed else 1), (dist.get_rank() if distributed else 0)

    @torch.no_grad()
    def reduce_grad_shards(self) -> None:
        """Phase 1: every bank's gradient shard; reduce-scatters are launched async and awaited lazily."""
        distributed, world, rank = self._world()
        self._shards = []
        for group in self.param_groups:
            for bank in self.banks(group["params"]):
                if not any(p.grad is not None for p in bank):
                    continue
                shard_size = -(-len(bank) // world)
                owned = range(rank * shard_size, min((rank + 1) * shard_size, len(bank)))
                if distributed and self.reduce_grads:
                    stacked = self._stack_grads(bank, range(shard_size * world))
                    shard = torch.empty(shard_size, *bank[0].shape, device=bank[0].device, dtype=stacked.dtype)
                    work = dist.reduce_scatter_tensor(shard, stacked, op=dist.ReduceOp.SUM, async_op=True)
                    self._shards.append(_BankShard(bank, group, shard, owned, work, world, sent=stacked))
                else:  # gradients already identical on every rank: stack only the owned ones
                    shard = self._stack_grads(bank, range(rank * shard_size, (rank + 1) * shard_size))
                    self._shards.append(_BankShard(bank, group, shard, owned))

    def grad_shard_sq_norm(self) -> Tensor:
        """Sum of squares of this rank's averaged gradient shards (fp32); summed over ranks it is the banks' norm²."""
        if self._shards is None:
            self.reduce_grad_shards()
        total = torch.zeros((), dtype=torch.float32, device=self._device())
        for s in self._shards:
            total += s.wait().float().square().sum()
        return total

    def scale_grad_shards(self, factor: Tensor | float) -> None:
        """Multiply the averaged gradient shards (the gradient-norm clip on sharded gradients)."""
        for s in self._shards or []:
            s.wait().mul_(factor)

    def _device(self) -> torch.device:
        return self.param_groups[0]["params"][0].device

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._shards is None:
            self.reduce_grad_shards()
        shards, self._shards = self._shards, None
        distributed, world, _ = self._world()
        for s in shards:
            self._step_bank(s, world, distributed)
        return loss

    def _step_bank(self, s: _BankShard, world: int, distributed: bool) -> None:
        bank, group, owned = s.bank, s.group, s.owned
        shard = s.wait()
        present = [p.grad is not None for p in bank]
        rows, cols = bank[0].shape
        block_rows = rows // group["row_blocks"]
        updates = torch.zeros(shard.shape[0], *bank[0].shape, device=bank[0].device, dtype=self.ns_dtype)
        nesterov_updates = []
        for j, i in enumerate(owned):
            if present[i]:
                nesterov_updates.append((j, self._nesterov(bank[i], shard[j], group)))
        if nesterov_updates:
            idx = [j for j, _ in nesterov_updates]
            stacked = torch.stack([u for _, u in nesterov_updates])
            if self.row_normalize:
                stacked = normalize_rows(stacked)
            blocks = stacked.reshape(-1, block_rows, cols)  # row_blocks > 1: each block is a matrix
            updates[idx] = newton_schulz(blocks, group["backend_steps"], dtype=self.ns_dtype, schedule=self.ns_schedule,
                                         square_first=True).reshape(stacked.shape)  # as R22 / R44 round it
        if distributed:
            full = torch.empty(updates.shape[0] * world, *bank[0].shape, device=updates.device, dtype=updates.dtype)
            dist.all_gather_into_tensor(full, updates)
        else:
            full = updates
        decay = group["lr"] * group["weight_decay"] * group["wd_scale"]
        step_size = group["lr"] * max(1, block_rows / cols) ** 0.5
        for i, p in enumerate(bank):
            if not present[i]:
                continue
            if decay != 0.0:
                p.mul_(1.0 - decay)
            p.add_(full[i].to(dtype=p.dtype), alpha=-step_size)

    def _stack_grads(self, bank: list[Tensor], indices: range) -> Tensor:
        """Gradients of ``bank[i]`` for i in ``indices`` (in ``grad_dtype`` if set); zeros past the bank's
        end (padding) or without a grad."""
        out = torch.zeros(len(indices), *bank[0].shape, device=bank[0].device, dtype=self.grad_dtype or bank[0].dtype)
        for j, i in enumerate(indices):
            if i < len(bank) and bank[i].grad is not None:
                out[j] = bank[i].grad
        return out

    def _nesterov(self, p: Tensor, g: Tensor, group: dict) -> Tensor:
        state = self._outside.setdefault(p, {}) if self.momentum_outside_state else self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        return g.add(buf, alpha=group["momentum"]) if group["nesterov"] else g  # as the reference Muon
