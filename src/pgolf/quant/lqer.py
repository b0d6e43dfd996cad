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

from pgolf.errors import PgolfError

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

    @property
    def rank(self) -> int:
        return int(self.a_codes.shape[1])


def _code_range(lr: LowRank, part: str) -> tuple[int, int]:
    if lr.mode == MODE_ASYM:
        return ASYM_A_RANGE if part == "a" else ASYM_B_RANGE
    qmax = (1 << (lr.bits - 1)) - 1
    return -qmax, qmax


def lowrank_problem(lr: object, shape: tuple[int, ...]) -> str | None:
    """What is wrong with ``lr`` as the correction of a tensor of ``shape``, or None."""
    if not isinstance(lr, LowRank):
        return "the LQER correction is not a LowRank"
    if lr.mode not in MODES:
        return f"unknown LQER mode {lr.mode!r}"
    tensors = (lr.a_codes, lr.a_scale, lr.b_codes, lr.b_scale)
    if not all(isinstance(t, Tensor) for t in tensors):
        return "LQER parts must be tensors"
    if lr.a_codes.dtype != torch.int8 or lr.b_codes.dtype != torch.int8:
        return "LQER codes must be int8"
    if lr.a_scale.dtype != torch.float16 or lr.b_scale.dtype != torch.float16:
        return "LQER scales must be float16"
    if len(shape) != 2 or lr.a_codes.ndim != 2 or lr.b_codes.ndim != 2:
        return "LQER needs a 2-D tensor and 2-D factors"
    rows, cols = shape
    r = lr.a_codes.shape[1]
    if r < 1 or tuple(lr.a_codes.shape) != (rows, r) or tuple(lr.b_codes.shape) != (r, cols):
        return f"LQER factors {tuple(lr.a_codes.shape)} @ {tuple(lr.b_codes.shape)} do not give {tuple(shape)}"
    if not isinstance(lr.bits, int) or not 2 <= lr.bits <= 8 or not isinstance(lr.group_size, int):
        return f"LQER bits/group {lr.bits!r}/{lr.group_size!r} are invalid"
    if lr.mode == MODE_ASYM:
        g = lr.group_size
        if g < 1 or (r * cols) % g or tuple(lr.a_scale.shape) != (1,) or tuple(lr.b_scale.shape) != ((r * cols) // g,):
            return f"LQER asym scales {tuple(lr.a_scale.shape)}/{tuple(lr.b_scale.shape)} do not fit group {g}"
    elif tuple(lr.a_scale.shape) != (rows,) or tuple(lr.b_scale.shape) != (r,):
        return f"LQER sym scales {tuple(lr.a_scale.shape)}/{tuple(lr.b_scale.shape)} do not fit ({rows}, {r})"
    for part, codes in (("a", lr.a_codes), ("b", lr.b_codes)):
        lo, hi = _code_range(lr, part)
        if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            return f"LQER {part.upper()} codes leave [{lo}, {hi}]"
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


def _fp16_scale(x: Tensor) -> Tensor:
    """fp32 values rounded to fp16 scales in the normal range."""
    return x.clamp(_MIN_SCALE, _MAX_SCALE).to(torch.float16)


def _codes(x: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
    return torch.clamp(torch.round(x / scale), lo, hi).to(torch.int8)


def pack_sym(a: Tensor, b: Tensor, bits: int) -> LowRank:
    qmax = (1 << (bits - 1)) - 1
    sa = _fp16_scale(a.abs().amax(dim=1) / qmax)
    sb = _fp16_scale(b.abs().amax(dim=1) / qmax)
    qa = _codes(a, sa.float()[:, None], -qmax, qmax)
    qb = _codes(b, sb.float()[:, None], -qmax, qmax)
    return LowRank(MODE_SYM, qa.contiguous(), sa.contiguous(), qb.contiguous(), sb.contiguous(), bits, 0)


def pack_asym(a: Tensor, b: Tensor, group_size: int) -> LowRank:
    sa = _fp16_scale(a.abs().amax().reshape(1) / ASYM_A_DIVISOR)
    qa = _codes(a, sa.float(), *ASYM_A_RANGE)
    groups = b.reshape(-1, group_size)
    sb = _fp16_scale(groups.abs().amax(dim=1) / ASYM_B_DIVISOR)
    qb = _codes(groups, sb.float()[:, None], *ASYM_B_RANGE).reshape(b.shape)
    return LowRank(MODE_ASYM, qa.contiguous(), sa.contiguous(), qb.contiguous(), sb.contiguous(), 4, group_size)


def lowrank_correction(error: Tensor, rank: int, factor_bits: int = 4, asym: bool = True, group_size: int = 64) -> LowRank:
    """The packed rank-``rank`` SVD correction of ``error`` (asym when the group divides B)."""
    e = error.detach().float().cpu()
    u, s, vh = torch.linalg.svd(e, full_matrices=False)
    r = max(1, min(rank, s.numel()))
    a = (u[:, :r] * s[:r]).contiguous()
    b = vh[:r, :].contiguous()
    if asym and group_size > 0 and b.numel() % group_size == 0:
        return pack_asym(a, b, group_size)
    return pack_sym(a, b, factor_bits)


def add_lqer(
    quantized, float_state: Mapping[str, Tensor], rank: int, top_k: int, factor_bits: int = 4, asym: bool = True,
    group_size: int = 64,
):
    """``quantized`` (a QuantizedState) with LQER corrections on its ``top_k`` worst intN tensors."""
    from pgolf.quant.int8 import KIND_INTN, QuantizedState, intn_dequantize

    errors: dict[str, Tensor] = {}
    for e in quantized:
        if e.kind == KIND_INTN and e.lqer is None:
            if e.name not in float_state:
                raise PgolfError(f"LQER: tensor {e.name!r} is missing from the float state")
            errors[e.name] = float_state[e.name].detach().float().cpu() - intn_dequantize(e.values, e.scale, e.group_size)
    worst = sorted(errors, key=lambda n: -float(errors[n].norm()))[:top_k]
    entries = []
    for e in quantized:
        if e.name in worst:
            lr = lowrank_correction(errors[e.name], rank, factor_bits, asym, group_size)
            e = dataclasses.replace(e, lqer=lr)
        entries.append(e)
    return QuantizedState(tuple(entries))
