"""``pgolf train``: one training run from a preset, the reference env vars and --set overrides."""

from __future__ import annotations

import argparse
import json
import os

from pgolf.config_cli import add_config_arguments, config_from_args


def _train(args: argparse.Namespace) -> int:
    from pgolf.train.lifecycle import replace_requested, train_recorded

    cfg = config_from_args(args)
    results = train_recorded(cfg, args.runs_dir, replace_requested(args.replace))
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for all
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print_summary(results)
    return 0


def print_summary(results: dict) -> None:
    pre, post = results["pre_quant"], results["post_quant"]
    final_phase = results.get("final_phase", "standard")
    if final_phase == "standard":
        print(f"val_bpb {post['val_bpb']:.4f} (round trip of the artifact; {pre['val_bpb']:.4f} before quantization)")
    else:
        print(f"val_bpb {results['val_bpb']:.4f} ({final_phase} evaluation of the artifact; standard windows "
              f"{post['val_bpb']:.4f}, {pre['val_bpb']:.4f} before quantization)")
    from pgolf.export.artifact import recorded_size_report
    from pgolf.train.loop import ARTIFACT_NAME

    for line in recorded_size_report(results).lines(f"{results['run_dir']}/{ARTIFACT_NAME}"):
        print(line)
    if results.get("quantized_tensors") == 0:
        print("warning: the quant policy quantized no tensor (each is at or under its small= size): the round trip "
              "above is the float model's score; set PGOLF_QUANT_SCHEME with a lower small= (e.g. int8,small=4096)")
    print(f"{results['steps']} steps in {results['train_time_s']:.1f}s on {results['device']}; run dir {results['run_dir']}")
    budget = results.get("time_budget") or {}
    if budget.get("verdict", "ok") != "ok":
        print(f"time budget {budget['verdict'].upper()}: training {budget['train_s']:.1f}s + calibration "
              f"{budget['calibration_s']:.1f}s is {budget['over_s']:.1f}s over the {budget['cap_s']:g}s cap")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train, export and score one run",
        description="Train one model. Under torchrun each process is a rank (DDP; NCCL on GPU, gloo on CPU). "
        "The reference env vars (ITERATIONS, TRAIN_SEQ_LEN, MAX_WALLCLOCK_SECONDS, DATA_PATH, ...) apply.",
    )
    add_config_arguments(parser)
    parser.add_argument("--runs-dir", default="runs", help="where runs/<run_id>/ is written (default: runs)")
    parser.add_argument("--json", action="store_true", help="print results.json as the last stdout line")
    parser.add_argument("--replace", action="store_true",
                        help="RUN_ID names an earlier run: delete it and train again from step 0 (also PGOLF_REPLACE_RUN=1); "
                        "without this, reusing a run's id is refused")
    parser.set_defaults(handler=_train)
