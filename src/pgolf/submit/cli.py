"""``pgolf stats``, ``pgolf seeds`` and ``pgolf submit``: from runs to a records/ folder."""

from __future__ import annotations

import argparse
import json

from pgolf.cli_vocab import add_deprecated_spelling, add_json_flag
from pgolf.config_cli import add_config_arguments, config_from_args


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
    return 0 if result.passes else 1


def _seeds(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pgolf.submit.seeds import SeedPlan, run_seeds, summary_table

    bundle = Path(args.bundle) if args.bundle else None
    if bundle is not None and not args.use_existing_bundle:
        from pgolf.bundle.build import build_bundle

        print(build_bundle(config_from_args(args), bundle).summary())
    plan = SeedPlan(args.preset, tuple(args.overrides), tuple(args.seeds), Path(args.runs_dir), args.nproc, bundle, args.prefix)
    outcomes = run_seeds(plan)
    if args.json:
        print(json.dumps([{"seed": o.seed, "run_id": o.run_id, "returncode": o.returncode,
                           "run_dir": str(o.run.path) if o.run else None, "val_bpb": o.run.results.get("val_bpb") if o.run else None,
                           "val_loss": o.run.results.get("val_loss") if o.run else None} for o in outcomes], sort_keys=True))
    else:
        print(summary_table(outcomes))
    return 0 if all(o.run for o in outcomes) else 1


def significance_for_submission(run_dirs: list[str], against: list[str]) -> tuple[dict, str]:
    """The stats of ``pgolf stats RUNS --against AGAINST`` in val_bpb with the 0.005-nat margin."""
    from pgolf.submit.scores import read_scores
    from pgolf.submit.stats import format_report, significance

    new, ref = read_scores(run_dirs), read_scores(against)
    result = significance(_values(new, "val_bpb", "runs"), _values(ref, "val_bpb", "--against"), "val_bpb",
                          bpb_per_nat=bpb_per_nat(new) or bpb_per_nat(ref))
    test = result.welch or result.one_sample_vs_sota_minus_margin
    summary = {"t": round(test.t, 4), "welch_df": round(result.welch.df, 4) if result.welch else None,
               "p_value": test.p, "delta_vs_sota_bpb": result.delta_bpb, "delta_vs_sota_nats": result.delta_nats,
               "record_rule_passes": result.passes}
    return summary, format_report(result)


def _submit(args: argparse.Namespace) -> int:
    from pgolf.submit.records import Submission, write_records_folder

    sig, text = significance_for_submission(args.runs, args.against) if args.against else (None, None)
    sub = Submission(args.name, args.author, args.github_id, args.track, args.blurb, args.date)
    path = write_records_folder(args.runs, sub, args.records_dir, bundle=args.bundle, significance=sig, significance_text=text)
    if args.json:
        print(json.dumps({"path": str(path), "files": sorted(p.name for p in path.iterdir()),
                          "sizes": {seed: size.breakdown() for seed, size in submitted_sizes(path).items()}}))
        return 0
    print(f"wrote {path}")
    for name in sorted(p.name for p in path.iterdir()):
        print(f"  {name}")
    for seed, size in submitted_sizes(path).items():
        print(f"seed {seed}:")
        for line in size.lines(f"seed {seed}'s artifact file"):
            print(f"  {line}")
    return 0


def submitted_sizes(folder) -> dict:
    """Each seed's size as submission.json holds it, through the one size accounting (pgolf.export.artifact)."""
    from pgolf.export.artifact import recorded_size_report

    data = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    return {seed: recorded_size_report(row) for seed, row in data["seed_results"].items()}


def register(subparsers) -> None:
    stats = subparsers.add_parser(
        "stats", help="one-sided significance of new runs against SOTA (the record rule)",
        description="Is the new mean lower than SOTA's by the record margin (0.005 nats) at p < 0.01? Reports the "
        "one-sample t-test against SOTA - margin (R04, R12) and Welch's t-test between per-seed scores (R24), "
        "t = (new - reference) / standard error, so negative t means better. RUNS and --against each take run "
        "directories, submission.json files (or records folders holding one; their seed_results are used) or numbers. "
        "Exit code 0 when the record rule passes, 1 when it fails, 2 on bad input.",
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

    seeds = subparsers.add_parser(
        "seeds", help="train one configuration with several seeds, one after another",
        description="Each seed runs in a fresh process (pgolf train, or the bundle with --bundle so the logs come "
        "from the submitted script), under torchrun with --nproc > 1. Only SEED and RUN_ID change. Run ids are "
        "NAME_seedN. Every seed is reported, failed ones too; exit code 1 when one failed.",
    )
    add_config_arguments(seeds)
    seeds.add_argument("--seeds", nargs="+", type=int, required=True, help="e.g. 1337 42 2025")
    seeds.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun --nproc_per_node); default 1")
    seeds.add_argument("--runs-dir", default="runs", help="where runs/<run_id>/ are written (default: runs)")
    seeds.add_argument("--name", dest="prefix", default="", help="run id prefix: runs are NAME_seedN (default: a timestamp)")
    add_deprecated_spelling(seeds, ["--prefix"], "--name", "prefix")
    seeds.add_argument("--bundle", default=None, metavar="PATH", help="build train_gpt.py at PATH for this config and run it for each seed")
    seeds.add_argument("--use-existing-bundle", action="store_true", help="with --bundle: do not rebuild PATH; the --set overrides still reach it, as env vars")
    add_json_flag(seeds, "one object per seed")
    seeds.set_defaults(handler=_seeds)

    submit = subparsers.add_parser(
        "submit", help="write records/<track>/<date>_<name>/ from finished seeds",
        description="README.md, submission.json, train_seed<N>.log for every seed, train_gpt.py (the given bundle, "
        "or one built from the runs' configuration) and requirements.txt. Runs must share one configuration "
        "(seed, run id and data locations aside). Code bytes are the bundle's.",
    )
    submit.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run directories, one per seed")
    submit.add_argument("--name", required=True, help="submission name (also the folder name)")
    submit.add_argument("--author", required=True, help="author name")
    submit.add_argument("--github-id", required=True, help="GitHub user id")
    submit.add_argument("--track", default="10min_16mb", choices=("10min_16mb", "non_record_16mb"), help="records track (default: 10min_16mb)")
    submit.add_argument("--blurb", default="", help="one-paragraph description")
    submit.add_argument("--date", default="", help="YYYY-MM-DD (default: today, UTC)")
    submit.add_argument("--against", nargs="+", default=None, metavar="RUN_OR_NUMBER", help="SOTA per-seed scores or one val_bpb, for the significance section")
    submit.add_argument("--bundle", default=None, help="the train_gpt.py the runs used (default: build one from their config)")
    submit.add_argument("--records-dir", default="records", help="root of the records tree (default: records)")
    add_json_flag(submit, "the folder written and its files")
    submit.set_defaults(handler=_submit)
