"""Low-bit weight quantization: schemes, clip rules, and codes + scales for one tensor.

A :class:`Scheme` is written as a compact string:

* ``int8ref``: the reference int8 path (:mod:`pgolf.quant.int8`), bit for bit;
* ``fp16`` / ``fp32``: stored as floats (passthrough);
* ``int<N>[g<G>][:<clip>]`` with N in 2..8: symmetric codes in ``[-(2^(N-1)-1), 2^(N-1)-1]`` with
  one fp16 scale per row, or per group of G columns; e.g. ``int6``, ``int5g64:mse``, ``int6:sd12.85``;
* ``ternary[g<G>]``: codes {-1, 0, +1} with an absmean scale per group (default G = 128; BitNet b1.58).

Clip rules (``clip`` is the largest magnitude that maps to the top code, per row or group):

* ``pct`` (default): the reference's 99.99984th percentile of ``|w|``;
* ``max``: the absolute maximum;
* ``mse``: GPTQ-lite, try the percentiles {99.9, 99.95, 99.99, 99.999, 100} and keep, per row or
  group, the one with the smallest squared reconstruction error;
* ``sd<k>``: SDClip, ``clip = k * std`` with the sample standard deviation (``W.std(dim=1)``, as
  the records; k = 12.85 for int6 there);
* ``hsd<k>``: Hessian-aware SDClip exactly as R31 (PR #1412) computes it:
  ``clip_i = k * std_i * (1 + 0.175 (r_i - 1))``, where ``d = diag(H)`` as GPTQ sees it (dead
  columns set to 1, plus 1% of its mean as damping, floored at 1e-8), ``r_i = mean_j(|W_ij| d_j /
  mean(d))`` divided by its mean over rows. Needs the input Hessian ``H`` (on both the
  round-to-nearest and the GPTQ path); falls back to plain SDClip without one. With groups, the
  row's factor multiplies each group's SDClip;
* ``absmean``: the mean of ``|w|`` (ternary's rule);
* ``ref``: the reference's per-row int8 rule at N bits, as R15 and PR #160 export int6: the
  99.99984th percentile clip (``torch.quantile``), ``w`` clamped to it, ``scale = clip / qmax``
  floored at ``1 / qmax`` (for weights under 1 in magnitude the floor is the scale), the codes
  computed from that fp32 scale and only the stored copy rounded to fp16. ``int8:ref`` is the
  reference's rule for a matrix exactly. GPTQ (pgolf.quant.gptq) rounds the scale to fp16 first;
* ``refmse``: R22's GPTQ-lite: the ``mse`` percentiles (the last, 100%, as the maximum), each
  giving ``scale = clip / qmax`` floored at ``1 / qmax`` and rounded to fp16, codes
  ``round(w / scale)`` without clamping ``w``; one percentile for the whole tensor, the one with
  the smallest mean squared error (the first of equals).

Scales are rounded to fp16 *before* the codes are computed, so the stored scale is exactly the
one the codes were fitted to, and :func:`fake_quantize` (used by QAT) reproduces the export to the
bit. All arithmetic is fp32 on CPU-or-device tensors, no Python loops over rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.quant.int8 import CLIP_Q, quantile_linear

FAMILY_REF = "int8ref"
FAMILY_FLOAT = "float"
FAMILY_INT = "int"
CLIP_RULES = ("pct", "max", "mse", "sd", "hsd", "absmean", "ref", "refmse")
MSE_CANDIDATE_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
HSD_LAMBDA = 0.175
# GPTQ's damping (pgolf.quant.gptq): R31 reads diag(H) after it, on the GPTQ and the plain path alike.
HESSIAN_DAMP = 0.01
TERNARY_DEFAULT_GROUP = 128
# The smallest normal fp16: a scale that rounds below it would make x / scale overflow.
MIN_SCALE = 2.0**-14

_INT_RE = re.compile(r"^int([2-8])(?:g(\d+))?(?::(pct|max|mse|absmean|refmse|ref|sd|hsd)(\d+(?:\.\d+)?)?)?$")
_TERNARY_RE = re.compile(r"^ternary(?:g(\d+))?$")


@dataclass(frozen=True)
class Scheme:
    """How one tensor is stored: see the module docstring for the string forms."""

    family: str
    bits: int = 8
    group_size: int = 0
    clip: str = "pct"
    k: float = 0.0
    float_dtype: torch.dtype = torch.float16

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def __str__(self) -> str:
        if self.family == FAMILY_REF:
            return "int8ref"
        if self.family == FAMILY_FLOAT:
            return "fp16" if self.float_dtype == torch.float16 else "fp32"
        if self.bits == 2 and self.clip == "absmean":
            return f"ternary{'' if self.group_size == TERNARY_DEFAULT_GROUP else f'g{self.group_size}'}"
        group = f"g{self.group_size}" if self.group_size else ""
        clip = "" if self.clip == "pct" else f":{self.clip}{self.k:g}" if self.clip in ("sd", "hsd") else f":{self.clip}"
        return f"int{self.bits}{group}{clip}"


def parse_scheme(text: str) -> Scheme:
    """The Scheme spelled ``text`` (e.g. ``int6g64:mse``); PgolfError naming it when invalid."""
    t = text.strip().lower()
    if t in ("int8ref", "int8"):
        return Scheme(FAMILY_REF)
    if t in ("fp16", "fp32"):
        return Scheme(FAMILY_FLOAT, 16 if t == "fp16" else 32, float_dtype=torch.float16 if t == "fp16" else torch.float32)
    m = _TERNARY_RE.match(t)
    if m:
        group = int(m.group(1)) if m.group(1) else TERNARY_DEFAULT_GROUP
        return _checked(Scheme(FAMILY_INT, 2, group, "absmean"), text)
    m = _INT_RE.match(t)
    if not m:
        raise PgolfError(
            f"quant scheme {text!r}: expected int8ref, fp16, fp32, ternary[gG] or int<2-8>[gG][:pct|max|mse|absmean|ref|refmse|sd<k>|hsd<k>]"
        )
    bits, group, clip, k = int(m.group(1)), int(m.group(2) or 0), m.group(3) or "pct", m.group(4)
    if clip in ("sd", "hsd") and k is None:
        raise PgolfError(f"quant scheme {text!r}: clip rule {clip} needs a multiplier, e.g. {clip}12.85")
    if clip not in ("sd", "hsd") and k is not None:
        raise PgolfError(f"quant scheme {text!r}: clip rule {clip} takes no number")
    return _checked(Scheme(FAMILY_INT, bits, group, clip, float(k or 0.0)), text)


def _checked(s: Scheme, text: str) -> Scheme:
    if s.group_size < 0 or (s.group_size and s.group_size < 2):
        raise PgolfError(f"quant scheme {text!r}: group size must be at least 2")
    if s.clip in ("sd", "hsd") and not s.k > 0:
        raise PgolfError(f"quant scheme {text!r}: SDClip multiplier must be positive")
    return s


def fits(scheme: Scheme, shape: tuple[int, ...]) -> bool:
    """Whether an int scheme can store a tensor of ``shape`` (2-D, columns divisible by the group)."""
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        return False
    return scheme.group_size == 0 or shape[1] % scheme.group_size == 0


# ---------------------------------------------------------------------------------------------
# Clip rules: each returns the clip per unit (a row, or a group) for ``units`` of shape [U, n]
# ---------------------------------------------------------------------------------------------


def _units(w: Tensor, group_size: int) -> Tensor:
    rows, cols = w.shape
    return w.reshape(rows, cols) if group_size == 0 else w.reshape(rows * (cols // group_size), group_size)


class _TopOrder:
    """The largest order statistics of each row of ``|units|``, enough for quantiles >= ``min_q``.

    Every quantile we need is in the top 0.1%, so a ``topk`` of a few elements replaces a full
    sort (the slow part of percentile clipping on a 17M-parameter model).
    """

    def __init__(self, abs_units: Tensor, min_q: float):
        n = abs_units.shape[-1]
        self.n = n
        self.first = max(0, int(min_q * (n - 1)) - 1)  # lowest rank index needed (fp32 rounding slack)
        k = n - self.first
        self.top = abs_units.topk(k, dim=-1, sorted=True).values.flip(-1)  # ascending: ranks first..n-1

    def quantile(self, q: float) -> Tensor:
        # Linear interpolation between order statistics with the rank in fp32 (torch.quantile's
        # rule), computed in numpy so that torch.compile sees constants, not data-dependent ints.
        rank = np.float32(q) * np.float32(self.n - 1)
        lo = int(np.floor(rank))
        hi = min(int(np.ceil(rank)), self.n - 1)
        return torch.lerp(self.top[:, lo - self.first], self.top[:, hi - self.first], float(rank - np.float32(lo)))


def _round_to_fp16_grid(x: Tensor) -> Tensor:
    """fp32 ``x`` (positive, in fp16's normal range) rounded to the nearest fp16 value, ties to even.

    Done on the fp32 bits rather than by ``.to(float16).float()``, which torch.compile's inductor
    may drop as a redundant cast pair: QAT under compile must see the same scales as the export.
    """
    bits = x.contiguous().view(torch.int32)
    dropped = 13  # fp32 keeps 23 mantissa bits, fp16 keeps 10
    rounded = (bits + ((1 << (dropped - 1)) - 1) + ((bits >> dropped) & 1)) & ~((1 << dropped) - 1)
    return rounded.view(torch.float32)


def _scale_for(clip: Tensor, qmax: int) -> Tensor:
    """fp16-representable scales (kept in fp32) for the given clips."""
    return _round_to_fp16_grid((clip / qmax).clamp(MIN_SCALE, 65504.0))


def _codes(units: Tensor, scale: Tensor, qmax: int) -> Tensor:
    return torch.clamp(torch.round(units / scale[:, None]), -qmax, qmax)


def _mse_clip(units: Tensor, qmax: int) -> Tensor:
    order = _TopOrder(units.abs(), min(MSE_CANDIDATE_QUANTILES))
    best_clip = best_err = None
    for q in MSE_CANDIDATE_QUANTILES:
        clip = order.quantile(q)
        scale = _scale_for(clip, qmax)
        err = (_codes(units, scale, qmax) * scale[:, None] - units).square().sum(dim=-1)
        if best_err is None:
            best_clip, best_err = clip, err
        else:
            better = err < best_err
            best_clip = torch.where(better, clip, best_clip)
            best_err = torch.where(better, err, best_err)
    assert best_clip is not None
    return best_clip


def _hsd_row_factor(w: Tensor, hessian_diag: Tensor) -> Tensor:
    """R31's per-row clip factor ``1 + lambda (r_i - 1)`` (see the module docstring), same op order."""
    d = hessian_diag.to(w.device, torch.float32)
    d = torch.where(d == 0, torch.ones_like(d), d)
    d = (d + HESSIAN_DAMP * d.mean()).clamp_min(1e-8)
    r = (w.abs() * (d / d.mean())[None, :]).mean(dim=1)
    return 1.0 + HSD_LAMBDA * (r / r.mean() - 1.0)


def clip_per_unit(w: Tensor, scheme: Scheme, hessian_diag: Tensor | None = None) -> Tensor:
    """The clip magnitude of every row (or group, row-major) of the 2-D fp32 tensor ``w``."""
    units = _units(w, scheme.group_size)
    if scheme.clip == "ref":
        return quantile_linear(units.abs(), CLIP_Q)  # torch.quantile, as the records call it
    if scheme.clip == "refmse":
        return _reference_mse_clip(units, scheme.qmax)
    if scheme.clip == "pct":
        return _TopOrder(units.abs(), CLIP_Q).quantile(CLIP_Q)
    if scheme.clip == "max":
        return units.abs().amax(dim=-1)
    if scheme.clip == "absmean":
        return units.abs().mean(dim=-1) * scheme.qmax
    if scheme.clip == "mse":
        return _mse_clip(units, scheme.qmax)
    clip = scheme.k * units.std(dim=-1)
    if scheme.clip == "hsd" and hessian_diag is not None:
        per_row = _hsd_row_factor(w, hessian_diag)  # >= 1 - lambda > 0: importance is never negative
        clip = clip * (per_row if scheme.group_size == 0 else per_row.repeat_interleave(w.shape[1] // scheme.group_size))
    return clip


# ---------------------------------------------------------------------------------------------
# Codes + scales
# ---------------------------------------------------------------------------------------------


def quantize_weight(w: Tensor, scheme: Scheme, hessian_diag: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(codes int8 [rows, cols], scale fp16 [rows] or [rows, groups])`` for a 2-D tensor."""
    if scheme.family != FAMILY_INT or not fits(scheme, tuple(w.shape)):
        raise PgolfError(f"scheme {scheme} cannot store a tensor of shape {tuple(w.shape)}")
    w32 = w.detach().float()
    if scheme.clip == "ref":
        return _reference_rule(w32, scheme)
    if scheme.clip == "refmse":
        return _reference_mse_rule(w32, scheme)
    scale = _scale_for(clip_per_unit(w32, scheme, hessian_diag), scheme.qmax)
    codes = _codes(_units(w32, scheme.group_size), scale, scheme.qmax).to(torch.int8).reshape(w.shape)
    rows = w.shape[0]
    scale16 = scale.to(torch.float16)
    return codes.contiguous(), (scale16 if scheme.group_size == 0 else scale16.reshape(rows, -1)).contiguous()


def _reference_rule(w32: Tensor, scheme: Scheme) -> tuple[Tensor, Tensor]:
    """The ``ref`` clip rule (module docstring): the reference's int8 arithmetic at ``scheme.bits``."""
    units = _units(w32, scheme.group_size)
    clip = clip_per_unit(w32, scheme)
    clipped = torch.maximum(torch.minimum(units, clip[:, None]), -clip[:, None])
    scale = (clip / float(scheme.qmax)).clamp_min(1.0 / float(scheme.qmax))  # fp32: the codes see this one
    codes = torch.clamp(torch.round(clipped / scale[:, None]), -scheme.qmax, scheme.qmax).to(torch.int8)
    scale16 = scale.to(torch.float16)
    rows = w32.shape[0]
    return (codes.reshape(w32.shape).contiguous(),
            (scale16 if scheme.group_size == 0 else scale16.reshape(rows, -1)).contiguous())


def _reference_mse_candidates(units: Tensor, qmax: int):
    """(clip, fp16 scale as fp32, codes) for each of R22's percentiles, in its order."""
    for q in MSE_CANDIDATE_QUANTILES:
        clip = quantile_linear(units.abs(), q) if q < 1.0 else units.abs().amax(dim=-1)
        scale = (clip / qmax).clamp_min(1.0 / qmax).to(torch.float16).float()
        yield clip, scale, torch.clamp(torch.round(units / scale[:, None]), -qmax, qmax)


def _reference_mse_best(units: Tensor, qmax: int):
    best, best_err = None, float("inf")
    for clip, scale, codes in _reference_mse_candidates(units, qmax):
        err = (units - codes * scale[:, None]).pow(2).mean().item()  # one choice for the whole tensor
        if err < best_err:
            best, best_err = (clip, scale, codes), err
    assert best is not None
    return best


def _reference_mse_clip(units: Tensor, qmax: int) -> Tensor:
    return _reference_mse_best(units, qmax)[0]


def _reference_mse_rule(w32: Tensor, scheme: Scheme) -> tuple[Tensor, Tensor]:
    """The ``refmse`` clip rule (module docstring)."""
    _, scale, codes = _reference_mse_best(_units(w32, scheme.group_size), scheme.qmax)
    scale16 = scale.to(torch.float16)
    rows = w32.shape[0]
    return (codes.to(torch.int8).reshape(w32.shape).contiguous(),
            (scale16 if scheme.group_size == 0 else scale16.reshape(rows, -1)).contiguous())


def dequantize_weight(codes: Tensor, scale: Tensor, group_size: int) -> Tensor:
    """fp32 weights from codes and scales (the exact inverse used on load)."""
    from pgolf.quant.int8 import intn_dequantize

    return intn_dequantize(codes, scale, group_size)


def fake_quantize(w: Tensor, scheme: Scheme) -> Tensor:
    """Quantize-dequantize ``w`` with a straight-through gradient (QAT).

    The forward value equals what the exported artifact will hold, bit for bit (same clip, same
    fp16 scale, same rounding); the backward pass is the identity.
    """
    codes, scale = quantize_weight(w, scheme)
    deq = dequantize_weight(codes, scale, scheme.group_size).to(w.dtype)
    return w + (deq - w).detach()
