"""Fused tanh-softcapped cross-entropy (``FUSED_CE=1``, from R43): one read of the logits.

The unfused loss writes ``c * tanh(x / c)`` for every logit, casts it to fp32 and runs
cross-entropy over it: at vocab 8192 and 98k tokens per GPU that is gigabytes of traffic and
memory for a tensor used once. Here each row's program streams its raw logits once with an online
log-sum-exp, and the backward recomputes the cap from the raw logits instead of storing it.

``c * tanh(x / c) = 2c * sigmoid(2x / c) - c``: Triton has a sigmoid on every version but not
always a tanh. The op returns the per-token losses and each row's log-sum-exp of the *capped*
logits, so the z-loss (``mean(lse^2)``) costs nothing extra and its gradient flows through
``lse``. Training only: evaluation keeps the one scoring path in :mod:`pgolf.eval`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_MAX_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _softcap(x, cap):
    return 2.0 * cap * tl.sigmoid(x * (2.0 / cap)) - cap


@triton.jit
def _forward_kernel(logits_ptr, targets_ptr, losses_ptr, lse_ptr, row_stride, n_cols, cap,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * row_stride
    running_max = -float("inf")
    running_sum = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(row_logits + cols, mask=inside, other=0.0).to(tl.float32)
        z = tl.where(inside, _softcap(x, cap), -float("inf"))
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    target = tl.load(targets_ptr + row)
    target_z = _softcap(tl.load(row_logits + target).to(tl.float32), cap)
    tl.store(lse_ptr + row, lse)
    tl.store(losses_ptr + row, lse - target_z)


@triton.jit
def _backward_kernel(logits_ptr, targets_ptr, lse_ptr, grad_losses_ptr, grad_lse_ptr, grad_logits_ptr,
                     row_stride, grad_row_stride, n_cols, cap, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * row_stride
    row_grad = grad_logits_ptr + row * grad_row_stride
    lse = tl.load(lse_ptr + row)
    grad_loss = tl.load(grad_losses_ptr + row)
    grad_lse = tl.load(grad_lse_ptr + row)
    target = tl.load(targets_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(row_logits + cols, mask=inside, other=0.0).to(tl.float32)
        s = tl.sigmoid(x * (2.0 / cap))
        probs = tl.exp(2.0 * cap * s - cap - lse)
        # d loss / d z = p - onehot(target); d lse / d z = p; d z / d x = 4 s (1 - s)
        grad_z = (grad_loss + grad_lse) * probs - tl.where(cols == target, grad_loss, 0.0)
        tl.store(row_grad + cols, grad_z * (4.0 * s * (1.0 - s)), mask=inside)


def _block_size(n_cols: int) -> int:
    return min(_MAX_BLOCK, triton.next_power_of_2(n_cols))


def _rows(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"softcapped_ce: want logits [rows, vocab] and targets [rows], got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return logits.contiguous(), targets.contiguous().to(torch.int64)


@torch.library.custom_op("pgolf::softcapped_ce", mutates_args=())
def softcapped_ce(logits: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """Per-row cross-entropy of ``cap * tanh(logits / cap)`` (fp32) and the capped rows' log-sum-exp."""
    logits, targets = _rows(logits, targets)
    n_rows, n_cols = logits.shape
    losses = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    lse = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    _forward_kernel[(n_rows,)](logits, targets, losses, lse, logits.stride(0), n_cols, float(cap),
                               BLOCK=_block_size(n_cols), num_warps=_NUM_WARPS)
    return losses, lse


@softcapped_ce.register_fake
def _(logits: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=torch.float32), logits.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op("pgolf::softcapped_ce_backward", mutates_args=())
def softcapped_ce_backward(logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor,
                           grad_lse: Tensor, cap: float) -> Tensor:
    logits, targets = _rows(logits, targets)
    n_rows, n_cols = logits.shape
    grad_logits = torch.empty_like(logits)
    _backward_kernel[(n_rows,)](
        logits, targets, lse.contiguous(), grad_losses.contiguous().float(), grad_lse.contiguous().float(),
        grad_logits, logits.stride(0), grad_logits.stride(0), n_cols, float(cap),
        BLOCK=_block_size(n_cols), num_warps=_NUM_WARPS)
    return grad_logits


@softcapped_ce_backward.register_fake
def _(logits: Tensor, targets: Tensor, lse: Tensor, grad_losses: Tensor, grad_lse: Tensor, cap: float) -> Tensor:
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output) -> None:
    logits, targets, cap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.cap = cap


def _backward(ctx, grad_losses: Tensor | None, grad_lse: Tensor | None):
    logits, targets, lse = ctx.saved_tensors
    if grad_losses is None:
        grad_losses = torch.zeros_like(lse)
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    return softcapped_ce_backward(logits, targets, lse, grad_losses, grad_lse, ctx.cap), None, None


softcapped_ce.register_autograd(_backward, setup_context=_setup_context)


def softcapped_cross_entropy(logits: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """Losses and log-sum-exps (fp32, shaped like ``targets``) of ``logits [..., vocab]``."""
    losses, lse = softcapped_ce(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), float(cap))
    return losses.view(targets.shape), lse.view(targets.shape)
