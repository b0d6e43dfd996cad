"""LQER: a quantized rank-r correction of the quantization error of the worst tensors (R44/R45, #1797).

After quantization, the intN tensors are ranked by ``||W - Q(W)||_F``; for the top ``LQER_TOP_K``
the error ``E = W - Q(W)`` is factored by SVD, ``A = U_r S_r`` ([rows, r]) and ``B = V_r^T``
([r, cols]), and A, B are stored quantized. Dequantization returns ``Q(W) + A_hat @ B_hat`` (fp32,
then the tensor's dtype). Two packings, as in the records:

* ``asym`` (``LQER_ASYM_ENABLED``): A as int2 codes in [-2, 1] with one scale ``max|A| / 1.5``;
  B as int4 codes in [-8, 7] with one scale ``max|group| / 7.5`` per group of ``LQER_ASYM_GROUP``
  elements of the flattened B. Used when that group divides B's element count;
* ``sym`` otherwise: A and B with one scale per row, codes in ``+-(2^(bits-1) - 1)``,
  ``bits = LQER_FACTOR_BITS``.

Scales are fp16 and the codes are fitted to the fp16-rounded scale, so what is stored is exactly
what was evaluated. Scales are kept in fp16's normal range (>= 2^-14) so a zero error cannot give a
zero scale (the records' ``clamp_min(1e-10)`` underflows to 0 in fp16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


MODE_SYM = "sym"
MODE_ASYM = "asym"
MODES = (MODE_SYM, MODE_ASYM)
ASYM_A_RANGE = (-2, 1)
ASYM_A_DIVISOR = 1.5
ASYM_B_RANGE = (-8, 7)
ASYM_B_DIVISOR = 7.5
_MIN_SCALE = 2.0**-14
_MAX_SCALE = 65504.0


@dataclass(frozen=True, eq=False)
class LowRank:
    """A quantized correction ``A_hat @ B_hat`` added to a tensor on dequantization.

    ``sym``: ``a_scale`` [rows], ``b_scale`` [r], codes within +-(2^(bits-1)-1).
    ``asym``: ``a_scale`` [1], ``b_scale`` [r * cols / group_size], A codes in [-2, 1], B in [-8, 7].
    """

    mode: str
    a_codes: Tensor
    a_scale: Tensor
    b_codes: Tensor
    b_scale: Tensor
    bits: int = 4
    group_size: int = 64


def lowrank_problem(lr: object, shape: tuple[int, ...]) -> str | None:
    """What is wrong with ``lr`` as the correction of a tensor of ``shape``, or None."""
    parts = (lr.a_codes, lr.a_scale, lr.b_codes, lr.b_scale)
    if not isinstance(lr, LowRank) or lr.mode not in MODES or not isinstance(lr.bits, int) or not 2 <= lr.bits <= 8 or not isinstance(lr.group_size, int):
        return "bad LQER mode, bits or group size"
    if not all(isinstance(t, Tensor) and t.dtype == d for t, d in zip(parts, (torch.int8, torch.float16) * 2)):
        return "LQER codes must be int8 tensors and scales float16"
    rows, cols = shape
    r = lr.a_codes.shape[-1]
    g = max(lr.group_size, 1)
    want = [(rows, r), (1,) if lr.mode == MODE_ASYM else (rows,), (r, cols), ((r * cols) // g,) if lr.mode == MODE_ASYM else (r,)]
    if r < 1 or [tuple(t.shape) for t in parts] != want or (lr.mode == MODE_ASYM and (r * cols) % g):
        return f"LQER parts {[tuple(t.shape) for t in parts]} do not fit {tuple(shape)}"
    q = (1 << (lr.bits - 1)) - 1
    ranges = (ASYM_A_RANGE, ASYM_B_RANGE) if lr.mode == MODE_ASYM else ((-q, q), (-q, q))
    for codes, (lo, hi) in zip((lr.a_codes, lr.b_codes), ranges):
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            return f"LQER codes leave [{lo}, {hi}]"
    return None


def lowrank_dequantize(lr: LowRank) -> Tensor:
    """``A_hat @ B_hat`` in fp32."""
    if lr.mode == MODE_ASYM:
        a = lr.a_codes.float() * lr.a_scale.float()
        b = (lr.b_codes.float().reshape(-1, lr.group_size) * lr.b_scale.float()[:, None]).reshape(lr.b_codes.shape)
    else:
        a = lr.a_codes.float() * lr.a_scale.float()[:, None]
        b = lr.b_codes.float() * lr.b_scale.float()[:, None]
    return a @ b


def _pack(x: Tensor, amax: Tensor, divisor: float, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """Codes of ``x`` [units, n] with one fp16 scale ``amax / divisor`` per unit (normal range)."""
    scale = (amax / divisor).clamp(_MIN_SCALE, _MAX_SCALE).to(torch.float16)
    return torch.clamp(torch.round(x / scale.float()[:, None]), lo, hi).to(torch.int8), scale


def pack_sym(a: Tensor, b: Tensor, bits: int) -> LowRank:
    q = (1 << (bits - 1)) - 1
    qa, sa = _pack(a, a.abs().amax(dim=1), q, -q, q)
    qb, sb = _pack(b, b.abs().amax(dim=1), q, -q, q)
    return LowRank(MODE_SYM, qa, sa, qb, sb, bits, 0)


def pack_asym(a: Tensor, b: Tensor, group_size: int) -> LowRank:
    qa, sa = _pack(a.reshape(1, -1), a.abs().amax().reshape(1), ASYM_A_DIVISOR, *ASYM_A_RANGE)
    groups = b.reshape(-1, group_size)
    qb, sb = _pack(groups, groups.abs().amax(dim=1), ASYM_B_DIVISOR, *ASYM_B_RANGE)
    return LowRank(MODE_ASYM, qa.reshape(a.shape), sa, qb.reshape(b.shape), sb, 4, group_size)


def lowrank_correction(error: Tensor, rank: int, factor_bits: int = 4, asym: bool = True, group_size: int = 64) -> LowRank:
    """The packed rank-``rank`` SVD correction of ``error`` (asym when the group divides B)."""
    u, s, vh = torch.linalg.svd(error.detach().float().cpu(), full_matrices=False)
    r = max(1, min(rank, s.numel()))
    a, b = u[:, :r] * s[:r], vh[:r]
    if asym and group_size > 0 and b.numel() % group_size == 0:
        return pack_asym(a, b, group_size)
    return pack_sym(a, b, factor_bits)


def add_lqer(quantized, float_state: Mapping[str, Tensor], rank: int, top_k: int, factor_bits: int = 4, asym: bool = True,
             group_size: int = 64):
    """``quantized`` (a QuantizedState) with LQER corrections on its ``top_k`` worst intN tensors."""
    from pgolf.quant.int8 import KIND_INTN, QuantizedState, intn_dequantize

    errors = {e.name: float_state[e.name].detach().float().cpu() - intn_dequantize(e.values, e.scale, e.group_size)
              for e in quantized if e.kind == KIND_INTN and e.lqer is None}
    worst = sorted(errors, key=lambda n: -float(errors[n].norm()))[:top_k]
    return QuantizedState(tuple(
        dataclasses.replace(e, lqer=lowrank_correction(errors[e.name], rank, factor_bits, asym, group_size))
        if e.name in worst else e for e in quantized))
