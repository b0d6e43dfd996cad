"""``pgolf stats``, ``pgolf seeds`` and ``pgolf submit``: from runs to a records/ folder."""

from __future__ import annotations

import argparse
import json


def _values(scores, metric: str, what: str) -> list[float]:
    from pgolf.errors import PgolfError

    values = [s.get(metric) for s in scores]
    missing = [s.source for s, v in zip(scores, values) if v is None]
    if missing:
        raise PgolfError(f"{what}: {missing[0]} has no {metric}")
    return values


def bpb_per_nat(scores) -> float | None:
    """val_bpb / val_loss over the scores that carry both (the tokenizer's bytes-per-token ratio)."""
    pairs = [(s.val_bpb, s.val_loss) for s in scores if s.plain is None and s.val_bpb and s.val_loss]
    if not pairs:
        return None
    return sum(b for b, _ in pairs) / sum(n for _, n in pairs)


def _stats(args: argparse.Namespace) -> int:
    from pgolf.submit.scores import read_scores
    from pgolf.submit.stats import format_report, significance

    new, against = read_scores(args.runs), read_scores(args.against)
    factor = args.bpb_per_nat or bpb_per_nat(new) or bpb_per_nat(against)
    result = significance(
        _values(new, args.metric, "runs"), _values(against, args.metric, "--against"), args.metric,
        bpb_per_nat=factor, margin=args.margin, margin_nats=args.margin_nats, alpha=args.alpha,
    )
    print(json.dumps(result.as_dict(), sort_keys=True) if args.json else format_report(result))
    return 0


def register(subparsers) -> None:
    stats = subparsers.add_parser(
        "stats", help="one-sided significance of new runs against SOTA (the record rule)",
        description="Is the new mean lower than SOTA's by the record margin (0.005 nats) at p < 0.01? Reports the "
        "one-sample t-test against SOTA - margin (R04, R12) and Welch's t-test between per-seed scores (R24), "
        "t = (new - reference) / standard error, so negative t means better. RUNS and --against each take run "
        "directories, submission.json files (or records folders holding one; their seed_results are used) or numbers.",
    )
    stats.add_argument("runs", nargs="+", metavar="RUN", help="the new runs (per-seed scores)")
    stats.add_argument("--against", nargs="+", required=True, metavar="RUN_OR_NUMBER", help="SOTA: its per-seed scores, or one number")
    stats.add_argument("--metric", choices=("val_bpb", "val_loss"), default="val_bpb", help="score compared (default: val_bpb)")
    stats.add_argument("--margin-nats", type=float, default=0.005, help="required improvement in nats (default: 0.005, the README rule)")
    stats.add_argument("--margin", type=float, default=None, help="required improvement in the metric's own units, overriding --margin-nats (R04/R12 used 0.005 bpb)")
    stats.add_argument("--bpb-per-nat", type=float, default=None, help="val_bpb / val_loss, to convert nats to bpb when only numbers are given")
    stats.add_argument("--alpha", type=float, default=0.01, help="significance level (default: 0.01)")
    stats.add_argument("--json", action="store_true", help="print the result as JSON")
    stats.set_defaults(handler=_stats)
