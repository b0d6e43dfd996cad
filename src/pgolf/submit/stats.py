"""Significance of a new score against SOTA, as the challenge README asks and records compute it.

Rule (README): a record must beat SOTA by at least 0.005 nats, shown at p < 0.01. Records test it
two ways, both here, one-sided, lower scores better:

* one-sample t-test of the new per-seed scores against ``SOTA - margin`` (R04, R12; df = n - 1);
* Welch's t-test between the two sets of per-seed scores (R24), with the Welch-Satterthwaite df;
  :func:`welch` with ``shift = margin`` tests the margin itself.

``t`` is ``(new - reference) / standard error``: negative means the new runs score lower (better).
(R04 and R12 printed ``reference - new``, the same number with the opposite sign.) ``p`` is
``P(T <= t)`` under Student's t. The Student-t CDF comes from the regularized incomplete beta
function, evaluated with Lentz's continued fraction, so no SciPy is needed.

Units: 0.005 nats is a per-token loss margin. In bpb it is ``0.005 * val_bpb / val_loss``, the
bytes-per-token ratio of the runs (about 0.0030 on sp1024); the report names the factor it used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import fmean, stdev

from pgolf.errors import PgolfError

RECORD_MARGIN_NATS = 0.005
RECORD_ALPHA = 0.01


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for x={x}, a={a}, b={b}")


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0 or not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs a, b > 0 and 0 <= x <= 1 (got x={x}, a={a}, b={b})")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(x, a, b) / a
    return 1.0 - front * _beta_continued_fraction(1.0 - x, b, a) / b  # symmetry keeps the fraction convergent


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (possibly fractional) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive (got {df})")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t > 0 else tail


@dataclass(frozen=True)
class TTest:
    t: float
    df: float
    p: float  # one-sided: P(T <= t), small when the new scores are lower


def _check(values: list[float], what: str, minimum: int) -> None:
    if len(values) < minimum:
        raise PgolfError(f"{what}: need at least {minimum} scores, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise PgolfError(f"{what}: scores must be finite numbers")


def one_sample(new: list[float], target: float) -> TTest:
    """H1: mean(new) < target. R04/R12 used target = SOTA - 0.005."""
    _check(new, "new scores", 2)
    se = stdev(new) / math.sqrt(len(new))
    if se == 0:
        raise PgolfError("new scores: all equal, the t statistic is undefined")
    t = (fmean(new) - target) / se
    df = len(new) - 1
    return TTest(t, df, student_t_cdf(t, df))


def welch(new: list[float], old: list[float], shift: float = 0.0) -> TTest:
    """H1: mean(new) - mean(old) < -shift (shift = a required margin; 0 tests any improvement)."""
    _check(new, "new scores", 2)
    _check(old, "reference scores", 2)
    va, vb = stdev(new) ** 2 / len(new), stdev(old) ** 2 / len(old)
    if va + vb == 0:
        raise PgolfError("scores: no variance in either set, the t statistic is undefined")
    t = (fmean(new) - fmean(old) + shift) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(new) - 1) + vb * vb / (len(old) - 1))
    return TTest(t, df, student_t_cdf(t, df))


@dataclass(frozen=True)
class Significance:
    metric: str  # "val_bpb" or "val_loss"
    n_new: int
    n_against: int
    mean_new: float
    std_new: float
    mean_against: float
    std_against: float | None
    delta: float  # mean_new - mean_against, in the metric's units
    bpb_per_nat: float | None  # conversion factor used, when known
    delta_nats: float | None
    delta_bpb: float | None
    margin: float  # the rule's margin in the metric's units
    margin_nats: float | None
    one_sample_vs_sota_minus_margin: TTest | None
    welch: TTest | None
    welch_with_margin: TTest | None
    alpha: float
    passes: bool  # improvement >= margin at p < alpha (the one-sample test; Welch when it exists and is stricter)

    def as_dict(self) -> dict:
        return asdict(self)


def significance(
    new: list[float], against: list[float], metric: str = "val_bpb", *, bpb_per_nat: float | None = None,
    margin: float | None = None, margin_nats: float = RECORD_MARGIN_NATS, alpha: float = RECORD_ALPHA,
) -> Significance:
    """The record test of ``new`` per-seed scores against SOTA (one number or its per-seed scores).

    ``margin`` (metric units) overrides the margin converted from ``margin_nats``; R04/R12 used
    0.005 in bpb units. Converting nats to bpb needs ``bpb_per_nat`` (val_bpb / val_loss of the runs).
    """
    if metric not in ("val_bpb", "val_loss"):
        raise PgolfError(f"metric {metric!r}: expected val_bpb or val_loss")
    _check(new, "new scores", 2)
    _check(against, "reference scores", 1)
    if margin is None:
        if metric == "val_loss":
            margin = margin_nats
        elif bpb_per_nat is None:
            raise PgolfError("val_bpb scores without val_loss: give --bpb-per-nat (val_bpb / val_loss) or --margin in bpb")
        else:
            margin = margin_nats * bpb_per_nat
    mean_new, mean_against = fmean(new), fmean(against)
    delta = mean_new - mean_against
    to_nats = 1.0 if metric == "val_loss" else (1.0 / bpb_per_nat if bpb_per_nat else None)
    to_bpb = bpb_per_nat if metric == "val_loss" else 1.0
    one = one_sample(new, mean_against - margin)
    w = welch(new, against) if len(against) >= 2 else None
    wm = welch(new, against, shift=margin) if len(against) >= 2 else None
    p_rule = max(one.p, wm.p) if wm is not None else one.p
    return Significance(
        metric, len(new), len(against), mean_new, stdev(new), mean_against,
        stdev(against) if len(against) >= 2 else None, delta, bpb_per_nat,
        delta * to_nats if to_nats is not None else None, delta * to_bpb if to_bpb is not None else None,
        margin, margin * to_nats if to_nats is not None else None, one, w, wm, alpha,
        passes=delta <= -margin and p_rule < alpha,
    )


def format_report(s: Significance) -> str:
    def fmt(x: float | None, digits: int = 6) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    def test_line(name: str, t: TTest | None) -> str:
        return f"{name:<40} t = {t.t:8.3f}  df = {t.df:6.2f}  p = {t.p:.3g}" if t else f"{name:<40} n/a (one reference score)"

    unit = "bpb" if s.metric == "val_bpb" else "nats"
    lines = [
        f"new      {s.metric}: mean {s.mean_new:.8f}  std {s.std_new:.8f}  (n={s.n_new})",
        f"against  {s.metric}: mean {s.mean_against:.8f}  std {fmt(s.std_against, 8)}  (n={s.n_against})",
        f"delta: {s.delta:+.8f} {unit} = "
        + (f"{fmt(s.delta_nats, 8)} nats" if unit == "bpb" else f"{fmt(s.delta_bpb, 8)} bpb")
        + (f"  (bpb per nat = {s.bpb_per_nat:.6f}, val_bpb / val_loss of the runs)" if s.bpb_per_nat else ""),
        f"margin: {s.margin:.6f} {unit}" + (f" = {s.margin_nats:.6f} nats" if s.margin_nats is not None else ""),
        test_line("one-sample vs mean(against) - margin", s.one_sample_vs_sota_minus_margin),
        test_line("Welch (any improvement)", s.welch),
        test_line("Welch (improvement beyond margin)", s.welch_with_margin),
        f"record rule (better by >= margin at p < {s.alpha}): {'PASS' if s.passes else 'FAIL'}",
    ]
    return "\n".join(lines)
