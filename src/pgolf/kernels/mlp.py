"""Fused relu^2 / LeakyReLU^2 MLP (``FUSED_MLP=1``, from R36): the activation rides on the matmul.

Unfused, the up-projection writes ``pre = x @ up^T`` and a second pass reads it back to write
``post = leaky_relu(pre, s)^2``; in the backward, the down-projection writes ``dpost`` and another
pass reads it with ``pre`` to write ``dpre``. Here one Triton matmul writes ``pre`` and ``post``
from its accumulator (forward), and one computes ``dpre = (dout @ down) * act'(pre)`` directly
(backward): two full passes over the ``tokens x hidden`` activations saved per layer and step.
The weight gradients and ``dx`` stay cuBLAS matmuls.

``relu2`` is LeakyReLU^2 with slope 0. ``act'(pre) = 2 pre`` above zero, ``2 s^2 pre`` below.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from pgolf.kernels.support import triton_interpreting

# A conservative tile for bf16 on Hopper and Ampere; the fused-kernel benchmark is where to tune it.
_BLOCK_M, _BLOCK_N, _BLOCK_K, _GROUP_M = 128, 128, 64, 8
_NUM_WARPS, _NUM_STAGES = 8, 3


@triton.jit
def _matmul_act_kernel(a_ptr, b_ptr, out_ptr, aux_ptr, M, N, K,
                       stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_on,
                       slope, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, FORWARD: tl.constexpr, PRECISION: tl.constexpr,
                       UPCAST: tl.constexpr):
    """``acc = A @ B^T`` for A [M, K] and B [N, K] (any strides), then the epilogue.

    FORWARD: ``out = acc`` (pre) and ``aux = leaky_relu(pre, slope)^2`` (post).
    Backward: ``aux`` holds pre; ``out = acc * act'(pre)``.
    ``out`` and ``aux`` share one layout.
    """
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # Tiles of GROUP_M rows run together so their B columns stay in L2.
    tiles_per_group = GROUP_M * tiles_n
    first_m = (pid // tiles_per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_group) % group_rows
    pid_n = (pid % tiles_per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + cols[None, :] * stride_bn + ks[:, None] * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (ks[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(ks[:, None] < k_left) & (cols[None, :] < N), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    inside = (rows[:, None] < M) & (cols[None, :] < N)
    offsets = rows[:, None] * stride_om + cols[None, :] * stride_on
    if FORWARD:
        pre = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + offsets, pre, mask=inside)
        pre32 = pre.to(tl.float32)  # post from the stored (rounded) pre, as the unfused pass computes it
        act = tl.where(pre32 > 0, pre32, slope * pre32)
        tl.store(aux_ptr + offsets, (act * act).to(aux_ptr.dtype.element_ty), mask=inside)
    else:
        pre = tl.load(aux_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        act_grad = 2.0 * pre * tl.where(pre > 0, 1.0, slope * slope)
        tl.store(out_ptr + offsets, (acc * act_grad).to(out_ptr.dtype.element_ty), mask=inside)


def _launch(a: Tensor, b: Tensor, out: Tensor, aux: Tensor, slope: float, forward: bool) -> None:
    (m, k), n = a.shape, b.shape[0]
    grid = (triton.cdiv(m, _BLOCK_M) * triton.cdiv(n, _BLOCK_N),)
    # fp32 inputs would get TF32 from tl.dot by default; the unfused fp32 matmul is IEEE.
    precision = "ieee" if a.dtype == torch.float32 else "tf32"
    # Triton's interpreter keeps bf16 as raw uint16 and its tl.dot multiplies those integers; fp32
    # operands give the same sums (a bf16 x bf16 product is exact in fp32), so the tests stay valid.
    upcast = triton_interpreting() and a.dtype != torch.float32
    if upcast:
        precision = "ieee"
    _matmul_act_kernel[grid](
        a, b, out, aux, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        out.stride(0), out.stride(1), float(slope),
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K, GROUP_M=_GROUP_M,
        FORWARD=forward, PRECISION=precision, UPCAST=upcast, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES)


def _check(x: Tensor, up: Tensor, down: Tensor) -> None:
    if x.ndim != 2 or up.ndim != 2 or down.ndim != 2 or up.shape[1] != x.shape[1] or down.shape != (x.shape[1], up.shape[0]):
        raise ValueError(f"fused MLP: want x [tokens, dim], up [hidden, dim], down [dim, hidden], got "
                         f"{tuple(x.shape)}, {tuple(up.shape)}, {tuple(down.shape)}")
    if not (x.dtype == up.dtype == down.dtype):
        raise ValueError(f"fused MLP: x, up and down must share a dtype, got {x.dtype}, {up.dtype}, {down.dtype}")


@torch.library.custom_op("pgolf::leaky_relu2_mlp", mutates_args=())
def leaky_relu2_mlp(x: Tensor, up: Tensor, down: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, pre, post)`` of ``out = leaky_relu(x @ up^T, slope)^2 @ down^T`` for 2-D ``x``."""
    _check(x, up, down)
    pre = x.new_empty(x.shape[0], up.shape[0])
    post = torch.empty_like(pre)
    _launch(x, up, pre, post, slope, forward=True)
    return post @ down.t(), pre, post


@leaky_relu2_mlp.register_fake
def _(x: Tensor, up: Tensor, down: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    hidden = x.new_empty(x.shape[0], up.shape[0])
    return x.new_empty(x.shape[0], down.shape[0]), hidden, torch.empty_like(hidden)


@torch.library.custom_op("pgolf::leaky_relu2_mlp_grad_pre", mutates_args=())
def leaky_relu2_mlp_grad_pre(grad_out: Tensor, down: Tensor, pre: Tensor, slope: float) -> Tensor:
    """``(grad_out @ down) * act'(pre)``: the gradient at the up-projection's output."""
    pre = pre.contiguous()
    grad_pre = torch.empty_like(pre)
    _launch(grad_out, down.t(), grad_pre, pre, slope, forward=False)
    return grad_pre


@leaky_relu2_mlp_grad_pre.register_fake
def _(grad_out: Tensor, down: Tensor, pre: Tensor, slope: float) -> Tensor:
    return torch.empty_like(pre)


def _setup_context(ctx, inputs, output) -> None:
    x, up, down, slope = inputs
    _, pre, post = output
    ctx.save_for_backward(x, up, down, pre, post)
    ctx.slope = slope


def _backward(ctx, grad_out: Tensor | None, _grad_pre, _grad_post):
    x, up, down, pre, post = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    grad_out = grad_out.contiguous()
    grad_down = grad_out.t() @ post
    grad_pre = leaky_relu2_mlp_grad_pre(grad_out, down, pre, ctx.slope)
    return grad_pre @ up, grad_pre.t() @ x, grad_down, None


leaky_relu2_mlp.register_autograd(_backward, setup_context=_setup_context)


def fused_mlp(x: Tensor, up: Tensor, down: Tensor, slope: float) -> Tensor:
    """``leaky_relu(x @ up^T, slope)^2 @ down^T`` for ``x [..., dim]``; weights in ``x``'s dtype."""
    out, _, _ = leaky_relu2_mlp(x.reshape(-1, x.size(-1)).contiguous(), up.contiguous(), down.contiguous(), float(slope))
    return out.view(*x.shape[:-1], down.shape[0])
