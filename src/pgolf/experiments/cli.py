"""``pgolf runs list|show|compare`` and ``pgolf report``: look back at runs, finished or not."""

from __future__ import annotations

import argparse
import json

from pgolf.cli_vocab import add_deprecated_spelling, add_json_flag

LIST_COLUMNS = ("run_id", "preset", "seed", "val_bpb", "pre_quant_val_bpb", "bytes_total", "steps", "step_avg_ms", "sweep", "status")
STATUS_WIDTH = 70  # a failure's reason, cut to keep one line per run


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.5f}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [tuple(_fmt(v) for v in row) for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _cell(row, column: str):
    if column == "seed":
        return str(row[column])
    if column == "status":
        text = " ".join(filter(None, (row["status"], row["detail"])))
        return text if len(text) <= STATUS_WIDTH else text[: STATUS_WIDTH - 3] + "..."
    return row[column]


def _list(args: argparse.Namespace) -> int:
    from pgolf.experiments.index import rows

    found = rows(args.runs_dir, args.sort, args.sweep)
    if args.json:
        print(json.dumps([dict(r) for r in found], sort_keys=True))
        return 0
    print_table(LIST_COLUMNS, [tuple(_cell(r, c) for c in LIST_COLUMNS) for r in found])
    return 0


def _show(args: argparse.Namespace) -> int:
    from pgolf.experiments.index import resolve

    run = resolve(args.runs_dir, args.run, finished=False)
    print(json.dumps({"run_dir": str(run.path), "status": run.status, "detail": run.detail, "results": run.results,
                      "config": run.config}, indent=2, sort_keys=True))
    return 0


COMPARE_RESULTS = ("val_bpb", "val_loss", "quant_gap_bpb", "bytes_model", "bytes_code", "bytes_total", "steps",
                   "step_avg_ms", "train_time_s", "eval_time_s", "tokens_per_s", "device", "world_size")


def _compare(args: argparse.Namespace) -> int:
    from pgolf.experiments.index import resolve
    from pgolf.experiments.read import flatten_config

    runs = [resolve(args.runs_dir, name, finished=False) for name in args.runs]
    flats = [flatten_config(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k)) for f in flats}) > 1]
    if args.json:
        print(json.dumps({r.run_id: {"config": {k: f.get(k) for k in differing}, "results": {k: r.results.get(k) for k in COMPARE_RESULTS}}
                          for r, f in zip(runs, flats)}, sort_keys=True))
        return 0
    header = ("",) + tuple(r.run_id for r in runs)
    print("config differences" + ("" if differing else ": none"))
    if differing:
        print_table(header, [(k, *(f.get(k) for f in flats)) for k in differing])
    print("\nresults")
    print_table(header, [("status", *(r.status for r in runs)), *((k, *(r.results.get(k) for r in runs)) for k in COMPARE_RESULTS)])
    return 0


def _report(args: argparse.Namespace) -> int:
    from pgolf.experiments.index import resolve
    from pgolf.experiments.report import report_sizes, write_report

    runs = [resolve(args.runs_dir, name, finished=False) for name in args.runs]
    written = write_report(runs, args.output)
    sizes = report_sizes(runs)
    if args.json:
        print(json.dumps({"files": [str(p) for p in written], "sizes": {r: s.breakdown() for r, s in sizes.items()}}))
        return 0
    for run_id, size in sizes.items():
        print(f"{run_id}:")
        for line in size.lines(f"{run_id}'s artifact file"):
            print(f"  {line}")
    for path in written:
        print(path)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pgolf.errors import PgolfError
    from pgolf.experiments.sweep import best, combinations, parse_grid, run_sweep

    if not args.grid:
        raise PgolfError("sweep: give at least one --grid KEY=v1,v2")
    combos = combinations(parse_grid(args.grid), args.random, args.sample_seed)
    results = run_sweep(args.preset, args.overrides, combos, Path(args.runs_dir), args.name, args.nproc, replace=args.replace)
    ordered = sorted(results, key=lambda r: (r.run is None, r.run.metric("val_bpb") if r.run else 0.0))
    top = best(results)
    if args.json:
        print(json.dumps({"best": top.run_id if top else None, "runs": [
            {"run_id": r.run_id, "overrides": list(r.overrides), "returncode": r.returncode, "run_dir": str(r.run.path) if r.run else None,
             "val_bpb": r.run.results.get("val_bpb") if r.run else None, "bytes_total": r.run.results.get("bytes_total") if r.run else None}
            for r in ordered]}, sort_keys=True))
        return 0 if top is not None and all(r.run for r in results) else 1
    print_table(("run_id", "val_bpb", "bytes_total", "overrides"),
                [(r.run_id, r.run.metric("val_bpb") if r.run else None, r.run.results.get("bytes_total") if r.run else None,
                  " ".join(r.overrides)) for r in ordered])
    if top is None:
        print("no run finished")
        return 1
    print(f"best: {top.run_id} val_bpb {top.run.metric('val_bpb'):.6f} with {' '.join(top.overrides)}")
    return 0 if all(r.run for r in results) else 1


def register(subparsers) -> None:
    runs = subparsers.add_parser("runs", help="list, show and compare runs (SQLite index under the runs dir)",
                                 description="Look back at runs: the runs folder's SQLite index (index.sqlite, "
                                 "kept in step with the run folders on disk) lists, shows and compares them, "
                                 "finished, interrupted or failed.")
    sub = runs.add_subparsers(dest="runs_verb", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default="runs", help="runs folder holding index.sqlite (default: runs)")
    listing = sub.add_parser("list", parents=[common], help="one line per run, with its status (newest first)",
                             description="One line per run: id, preset, seed, val_bpb before and after "
                             "quantization, artifact bytes, steps, step time, sweep and status.")
    listing.add_argument("--sort", default="finished", help="column to sort by, e.g. val_bpb (default: finished, newest first)")
    listing.add_argument("--sweep", default=None, help="only runs of this sweep")
    add_json_flag(listing, "one object per run, every indexed column")
    listing.set_defaults(handler=_list)
    show = sub.add_parser("show", parents=[common], help="results and config of one run",
                          description="The results and the resolved config of one run, as JSON.")
    show.add_argument("run", help="run id (or unique prefix) or run directory")
    show.add_argument("--json", action="store_true", help="accepted for uniformity: show always prints JSON")
    show.set_defaults(handler=_show)
    compare = sub.add_parser("compare", parents=[common], help="config differences and results side by side",
                             description="The config fields that differ between runs, then their results, side by side.")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run ids or run directories")
    add_json_flag(compare, "each run's differing config fields and results")
    compare.set_defaults(handler=_compare)

    report = subparsers.add_parser("report", parents=[common], help="PNG plots and an HTML page for runs",
                                   description="Train loss and val_bpb vs step and vs wallclock, val_bpb by phase, artifact bytes; "
                                   "one index.html showing them with a results table.")
    report.add_argument("runs", nargs="+", metavar="RUN", help="run ids or run directories")
    report.add_argument("--out", dest="output", default="report", metavar="DIR",
                        help="output folder, created when missing (default: report)")
    add_deprecated_spelling(report, ["-o", "--output"], "--out", "output")
    add_json_flag(report, "the files written")
    report.set_defaults(handler=_report)

    from pgolf.config_cli import add_config_arguments

    sweep = subparsers.add_parser("sweep", parents=[common], help="train a grid or random sample of configurations; print the best",
                                  description="Each combination of --grid values (or --random N of them) is one pgolf train in a "
                                  "fresh process, tagged with the sweep name in the runs index; run ids are NAME_NNN. "
                                  "Exit code 1 when a run failed.")
    add_config_arguments(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2", help="values to try for one field (repeatable)")
    sweep.add_argument("--random", type=int, default=None, metavar="N", help="run N random distinct combinations instead of all")
    sweep.add_argument("--sample-seed", type=int, default=0, help="seed of the --random draw (default: 0)")
    sweep.add_argument("--name", default="", help="sweep name, the run id prefix (default: sweep-<timestamp>)")
    sweep.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun); default 1")
    sweep.add_argument("--replace", action="store_true", help="the sweep name was used before: delete its runs and train them again")
    add_json_flag(sweep, "every run and the best")
    sweep.set_defaults(handler=_sweep)
