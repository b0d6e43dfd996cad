"""Muon: momentum SGD whose update for each matrix is orthogonalised by a Newton-Schulz iteration.

As in the reference (from modded-nanogpt): Nesterov momentum, 5 quintic Newton-Schulz steps with
coefficients (3.4445, -4.7750, 2.0315) run in bf16 on the Frobenius-normalised update, tall
matrices transposed, the result scaled by ``sqrt(max(1, rows/cols))``. Under torch.distributed each
rank orthogonalises every ``world_size``-th matrix and one all-reduce of a flat bf16 buffer shares
the updates, so every rank applies the same step.

Record options (challenge.md sec. 2.3), all off by default so the reference step is unchanged:

* decoupled weight decay ``p *= 1 - lr * wd * wd_scale`` before the update (MUON_WD; R11/R15,
  0.095 from R35 on; ``wd_scale`` carries the R40 taper, see :mod:`pgolf.optim.schedule`);
* MuonEq-R: each row of the Nesterov update divided by its L2 norm before Newton-Schulz
  (MUON_ROW_NORMALIZE; R28 / PR #1260, arXiv:2603.28254);
* Polar Express: one minimax (a, b, c) per Newton-Schulz iteration instead of the fixed quintic
  (R43 / PR #1787, coefficients from PR #1344);
* ``grad_dtype=torch.bfloat16``: each gradient cast to bf16 before the momentum, which then lives in
  bf16 (R22 / R44's Parallel Muon does ``p.grad.bfloat16()``; PGOLF_MUON_MOMENTUM_BF16).

A param group's ``row_blocks`` (default 1) splits each of its matrices into that many equal row
blocks, each orthogonalised (and scaled) as a matrix of its own: a fused SwiGLU ``fc`` holds the
gate and up projections, two matrices to the records (PR #1090), one tensor here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express per-iteration coefficients exactly as in R43 (PR #1787, which took them from PR #1344).
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

NS_SCHEDULES = ("quintic", "polar_express")


def ns_coefficients(schedule: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of ``steps`` iterations: the fixed quintic, or Polar Express's first ``steps``."""
    if schedule == "quintic":
        return [NS_COEFFICIENTS] * steps
    if schedule == "polar_express":
        if steps > len(POLAR_EXPRESS_COEFFICIENTS):
            raise ValueError(f"Polar Express defines {len(POLAR_EXPRESS_COEFFICIENTS)} iterations, not {steps}")
        return list(POLAR_EXPRESS_COEFFICIENTS[:steps])
    raise ValueError(f"unknown Newton-Schulz schedule {schedule!r}")


def newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16,
                  schedule: str = "quintic", square_first: bool = False) -> Tensor:
    """Approximately orthogonalise a matrix, or each matrix of a stack ``[..., rows, cols]`` on its own
    (its singular values pushed towards 1). On one 2-D matrix this is the reference's function bit for bit;
    ``square_first`` computes ``c * (A @ A)`` as R22 / R44's batched function does instead of the
    reference's ``(c * A) @ A``: equal in exact arithmetic, rounded differently."""
    X = G.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    for a, b, c in ns_coefficients(schedule, steps):
        A = X @ X.mT
        B = b * A + (c * (A @ A) if square_first else c * A @ A)
        X = a * X + B @ X
    return X.mT if transposed else X


def normalize_rows(update: Tensor, eps: float = 1e-7) -> Tensor:
    """MuonEq-R: every row divided by its L2 norm (computed in fp32, floored at ``eps``)."""
    norms = update.float().norm(dim=-1, keepdim=True).clamp_min(eps)
    return update / norms.to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; ``ns_dtype`` is bf16 as the reference (float64 for exactness tests).

    Per group: ``weight_decay`` (decoupled, scaled by ``wd_scale``) and ``row_blocks``. For the whole
    optimizer: ``row_normalize`` (MuonEq-R), ``ns_schedule`` (``quintic`` or ``polar_express``) and
    ``grad_dtype``, the dtype of the momentum (None: the gradient's own, as the reference). Those
    three are attributes, not group entries, because no record varies them by group and a bundle then
    folds them to constants (the quintic bundles ship neither Polar Express nor MuonEq-R).
    """

    def __init__(self, params, lr: float, momentum: float, backend_steps: int = 5, nesterov: bool = True,
                 ns_dtype: torch.dtype = torch.bfloat16, weight_decay: float = 0.0, row_normalize: bool = False,
                 ns_schedule: str = "quintic", grad_dtype: torch.dtype | None = None):
        ns_coefficients(ns_schedule, backend_steps)  # reject a bad schedule before the first step
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                        weight_decay=weight_decay, wd_scale=1.0, row_blocks=1)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        self.grad_dtype = grad_dtype
        self.row_normalize = row_normalize
        self.ns_schedule = ns_schedule

    def _update(self, p: Tensor, group: dict) -> Tensor:
        g = p.grad if self.grad_dtype is None else p.grad.to(self.grad_dtype)
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(g)
        if group["nesterov"]:
            g = g.add(buf, alpha=group["momentum"])
        if self.row_normalize:
            g = normalize_rows(g)
        rows = g.size(0) // group["row_blocks"]
        blocks = g.reshape(-1, rows, g.size(1)) if group["row_blocks"] > 1 else g
        update = newton_schulz(blocks, steps=group["backend_steps"], dtype=self.ns_dtype,
                               schedule=self.ns_schedule).reshape(g.shape)
        return update * max(1, rows / update.size(1)) ** 0.5

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
            decay = group["lr"] * group["weight_decay"] * group["wd_scale"]
            offset = 0
            for p in params:
                if decay != 0.0:  # skipped at 0 so the reference step stays bit-identical
                    p.mul_(1.0 - decay)
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(dtype=p.dtype), alpha=-group["lr"])
                offset += p.numel()
        return loss
