"""Learning-rate, weight-decay and momentum schedules.

The reference: the LR is constant, then decays linearly to 0 over the warm-down. With a wallclock
cap the warm-down is measured in time: ``WARMDOWN_ITERS`` times the average step time so far,
ending at the cap. Muon's momentum ramps linearly from MUON_MOMENTUM_WARMUP_START over the first
MUON_MOMENTUM_WARMUP_STEPS steps.

Record options (challenge.md sec. 2.3), off by default:

* ``WARMDOWN_FRAC`` > 0 replaces WARMDOWN_ITERS: the LR decays linearly over the last fraction of
  training, where the training fraction is elapsed/cap under a wallclock cap and step/ITERATIONS
  otherwise (R24 onward, 0.72-0.85);
* ``MIN_LR`` floors the LR scale during the warm-down (R43 / PR #1787 uses 0.10);
* the WD taper keeps Muon's WD at full strength until ``WD_TAPER_START_FRAC`` of training, then
  scales it linearly to ``WD_TAPER_FINAL_MULT`` at the end (R40 / PR #1729: 0.70 and 0.50).
"""

from __future__ import annotations


def training_frac(step: int, elapsed_ms: float, iterations: int, max_wallclock_ms: float | None) -> float:
    """How far training has come, in [0, 1]: by time under a cap, by steps otherwise (as the records)."""
    if max_wallclock_ms is None:
        return step / max(iterations, 1)
    return elapsed_ms / max(max_wallclock_ms, 1e-9)


def lr_scale(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int, max_wallclock_ms: float | None,
             warmdown_frac: float = 0.0, min_lr: float = 0.0) -> float:
    if warmdown_frac > 0:
        frac = training_frac(step, elapsed_ms, iterations, max_wallclock_ms)
        return frac_warmdown_scale(frac, warmdown_frac, min_lr)
    if min_lr > 0:
        return max(_iters_warmdown_scale(step, elapsed_ms, iterations, warmdown_iters, max_wallclock_ms), min_lr)
    return _iters_warmdown_scale(step, elapsed_ms, iterations, warmdown_iters, max_wallclock_ms)


def frac_warmdown_scale(frac: float, warmdown_frac: float, min_lr: float = 0.0) -> float:
    """1 until ``1 - warmdown_frac`` of training, then linear to 0 at the end, floored at ``min_lr``."""
    if frac >= 1.0 - warmdown_frac:
        return max((1.0 - frac) / warmdown_frac, min_lr)
    return 1.0


def _iters_warmdown_scale(step: int, elapsed_ms: float, iterations: int, warmdown_iters: int,
                          max_wallclock_ms: float | None) -> float:
    if warmdown_iters <= 0:
        return 1.0
    if max_wallclock_ms is None:
        warmdown_start = max(iterations - warmdown_iters, 0)
        if warmdown_start <= step < iterations:
            return max((iterations - step) / max(warmdown_iters, 1), 0.0)
        return 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = warmdown_iters * step_ms
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def wd_taper_scale(frac: float, start_frac: float, final_mult: float) -> float:
    """1 until ``start_frac`` of training, then linear to ``final_mult`` at frac = 1 (R40)."""
    if frac <= start_frac or start_frac >= 1.0:
        return 1.0
    progress = min((frac - start_frac) / (1.0 - start_frac), 1.0)
    return 1.0 + (final_mult - 1.0) * progress


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    frac = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return (1 - frac) * start + frac * end
