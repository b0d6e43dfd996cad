"""``pgolf bench train|eval``: step time, tokens/s, MFU, peak memory and phase times, optionally vs the reference."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pgolf.cli_vocab import add_deprecated_spelling
from pgolf.config_cli import add_config_arguments, config_from_args


def _bench(args: argparse.Namespace) -> int:
    import torch

    from pgolf.bench import reference as ref
    from pgolf.bench.report import build_report, reference_numbers, result_path, write_report
    from pgolf.bench.run import bench_eval, bench_train
    from pgolf.files import check_writable
    from pgolf.runtime import pick_device

    cfg = config_from_args(args)
    if os.environ.get("RANK", "0") == "0":  # refused before the benchmark, not after it
        check_writable(args.out_dir, "--out")
    warmup = cfg.train.warmup_steps if args.warmup is None else args.warmup
    script = Path(args.reference) if args.reference else None
    if script is not None:  # refuse before spending minutes on pgolf's side
        device = pick_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
        text = ref.check_reference_possible(script, device.type, int(os.environ.get("WORLD_SIZE", "1")))
        ref.check_reference_config(cfg, text, args.mode)
    ours = bench_train(cfg, args.steps, warmup) if args.mode == "train" else bench_eval(cfg, args.batch_tokens)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for all
    reference = None
    if script is not None:
        torch.cuda.empty_cache()  # give the reference the memory pgolf's side held
        from pgolf.progress import phase

        with phase("bench: reference", detail=f"{script} as a subprocess, compiling as it always does"):
            raw = ref.run_reference(script, cfg, args.mode, ours.steps, ours.warmup_steps)
        reference = reference_numbers(raw, ours, cfg)
    report = build_report(cfg, ours, reference, str(script) if script else None)
    path = write_report(report, result_path(Path(args.out_dir), cfg.preset, ours))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print_summary(report, path)
    return 0


def print_summary(report: dict, path: Path) -> None:
    for side in ("pgolf", "reference"):
        m = report[side]
        if m is None:
            continue
        mfu = "unknown (no peak FLOP/s for this device)" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
        peak = "n/a (CUDA only)" if m["peak_memory_mib"] is None else f"{m['peak_memory_mib']:,d} MiB"
        ms = m["step_ms"] if "step_ms" in m else m["eval_time_ms"]
        unit = "ms/step" if report["pgolf"]["mode"] == "train" else "ms"
        print(f"{side:<9} {ms:10.2f} {unit:<7}  {m['tokens_per_s']:>14,.0f} tok/s  "
              f"MFU {mfu}  peak memory {peak}")
    phases = report["pgolf"]["phases_ms_per_step"]
    print("phases (synchronised): " + ", ".join(f"{k} {v:.2f} ms" for k, v in phases.items()))
    print(f"written {path}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure training or evaluation speed (optionally against the reference script)",
        description="Time pgolf's training step or evaluation on this device: step time, tokens/s, model FLOPs "
        "utilisation, peak CUDA memory and synchronised per-phase times; a recompilation during the timed run "
        "is an error. eval times the standard evaluation, or with EVAL_STRIDE > 0 the sliding one of pgolf eval "
        "--stride. The report goes to OUT/<date>_<device>_<preset>_<mode>.json (OUT: --out, default the current folder).",
    )
    parser.add_argument("mode", choices=("train", "eval"), help="what to time")
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (train mode; default 20)")
    parser.add_argument("--batch-tokens", type=int, default=65_536,
                        help="sliding evaluation (EVAL_STRIDE > 0): window tokens per forward batch (default 65536, as pgolf eval)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed, undone warm-up steps (default WARMUP_STEPS, at least 2)")
    parser.add_argument("--reference", metavar="PATH/train_gpt.py",
                        help="also run this reference script on the same device, configuration and data (CUDA only)")
    parser.add_argument("--out", dest="out_dir", default=".", metavar="DIR",
                        help="folder for the JSON report, created when missing (default: the current folder)")
    add_deprecated_spelling(parser, ["--out-dir"], "--out", "out_dir")
    parser.add_argument("--json", action="store_true", help="print the JSON report as the last stdout line")
    parser.set_defaults(handler=_bench)
