"""The significance tests: the Student-t CDF against closed forms and tabulated quantiles, and the
t statistics two records published from their per-seed scores."""

from __future__ import annotations

import json
import math

import pytest

from pgolf.submit.stats import one_sample, regularized_incomplete_beta, significance, student_t_cdf, welch

# records/track_10min_16mb/2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072/README.md and submission.json:
# per-seed val_bpb of this run (seeds 314, 42, 999) and of PR #549, "Welch's t-test gives t = -11.83,
# df ≈ 3.31" (submission.json: t_statistic -11.8339, welch_df 3.3063).
R24_NEW = [1.11508120, 1.11437394, 1.11475014]
R24_PR549 = [1.11922988, 1.12002032, 1.11888882]
# records/track_10min_16mb/2026-03-18_LongContextSeq2048/README.md: SEED=1337/1338/1339 val_bpb, "One-sided
# one-sample t-test against 1.2193657: t=31.42 with df=2, which gives p=0.00051" (1.2193657 = 1.2243657 - 0.005;
# that README's t is threshold - mean, ours is mean - threshold).
R04_NEW = [1.20576485, 1.20617460, 1.20715923]
R04_SOTA = 1.2243657


@pytest.mark.parametrize("x", [0.01, 0.3, 0.5, 0.77, 0.999])
@pytest.mark.parametrize("a,b", [(1.0, 1.0), (2.5, 1.0), (1.0, 3.5), (4.0, 4.0), (0.5, 0.5)])
def test_incomplete_beta_matches_closed_forms(x, a, b):
    if a == b == 0.5:
        expected = 2 / math.pi * math.asin(math.sqrt(x))  # the arcsine distribution
    elif b == 1.0:
        expected = x**a
    elif a == 1.0:
        expected = 1 - (1 - x) ** b
    else:  # I_x(4, 4) by its finite binomial sum
        expected = sum(math.comb(7, j) * x**j * (1 - x) ** (7 - j) for j in range(4, 8))
    assert regularized_incomplete_beta(x, a, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("t", [-40.0, -3.0, -0.5, 0.0, 0.7, 2.0, 31.0])
def test_t_cdf_matches_cauchy_and_df2_closed_forms(t):
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("q,df,t", [(0.99, 2, 6.964557), (0.975, 10, 2.228139), (0.95, 30, 1.697261), (0.999, 4, 7.173182)])
def test_t_cdf_at_tabulated_quantiles(q, df, t):
    assert student_t_cdf(t, df) == pytest.approx(q, abs=2e-7)
    assert student_t_cdf(-t, df) == pytest.approx(1 - q, abs=2e-7)


def test_reproduces_the_welch_test_published_by_r24():
    w = welch(R24_NEW, R24_PR549)
    assert round(w.t, 2) == -11.83 and round(w.df, 2) == 3.31
    assert w.t == pytest.approx(-11.8339, abs=1e-4) and w.df == pytest.approx(3.3063, abs=1e-4)


def test_reproduces_the_one_sample_test_published_by_r04():
    test = one_sample(R04_NEW, R04_SOTA - 0.005)
    assert round(-test.t, 2) == 31.42 and test.df == 2
    assert round(test.p, 5) == 0.00051


def test_record_rule_in_nats_converts_the_margin_to_bpb():
    # R24 beat PR #549 by 0.00784 nats = 0.00464 bpb: enough for 0.005 nats, not for 0.005 bpb.
    factor = 1.11473509 / 1.88217853  # its val_bpb / val_loss
    in_nats = significance(R24_NEW, R24_PR549, bpb_per_nat=factor)
    assert in_nats.margin == pytest.approx(0.005 * factor) and in_nats.margin_nats == pytest.approx(0.005)
    assert in_nats.delta_nats == pytest.approx(-0.00784215, abs=1e-6)
    assert in_nats.passes
    assert not significance(R24_NEW, R24_PR549, margin=0.005).passes


def test_stats_cli_on_numbers_and_submission_files(run_pgolf, tmp_path):
    code, out, err = run_pgolf(["stats", *map(str, R04_NEW), "--against", str(R04_SOTA), "--margin", "0.005", "--json"])
    assert code == 0, err
    assert round(json.loads(out)["one_sample_vs_sota_minus_margin"]["t"], 2) == -31.42
    sub = tmp_path / "submission.json"
    sub.write_text(json.dumps({"seed_results": {s: {"val_bpb": v} for s, v in zip("abc", R24_PR549)}}))
    code, out, err = run_pgolf(["stats", *map(str, R24_NEW), "--against", str(tmp_path), "--margin", "0.005"])
    assert code == 1, err  # a test that ran and failed, as pgolf check and doctor report one
    assert "t =  -11.834" in out and "FAIL" in out


@pytest.mark.parametrize("argv,message", [
    (["stats", "1.2", "--against", "1.3"], "need at least 2 scores"),
    (["stats", "1.2", "1.2", "--against", "1.3", "--margin", "0.005"], "all equal"),
    (["stats", "1.2", "1.21", "--against", "1.3"], "give --bpb-per-nat"),
    (["stats", "no/such/run", "1.2", "--against", "1.3"], "run directory not found"),
])
def test_stats_cli_bad_input_is_one_line(run_pgolf, argv, message):
    code, _, err = run_pgolf(argv)
    assert code == 2 and err.count("\n") == 1 and message in err
