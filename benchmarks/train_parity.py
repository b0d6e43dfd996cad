"""Same math: ``pgolf train`` against the reference ``train_gpt.py``, N steps on the same data and seeds.

Issue 7's speed target holds only "with the same math": pgolf's loss after 200 steps must lie within
the reference's own run-to-run spread. This script runs both sides, one after the other on one GPU,
for every seed in ``--seeds``: ``pgolf train --preset baseline`` and the reference, each with
``ITERATIONS=--steps``, ``WARMUP_STEPS=20``, no wall-clock cap, every step logged, on the same train
shards (the reference reads them through links named as it expects) and the same val split. Per run
it keeps every step's training loss, the pre-quantization and round-trip val_bpb and the step time.

The verdict compares seed means with the reference's spread (max - min over its seeds) of two
numbers: the training loss averaged over the last 10 steps (one step's loss is noisy) and the
pre-quantization val_bpb. ``within_spread`` is true when each of pgolf's means is no further from the
reference's mean than that spread. Results (both sides' runs, commit, device, versions) are
rewritten after every run, so a run cut off by a time limit keeps what finished, and ``--resume``
goes on from there.

The reference is not part of pgolf: a local copy of openai/parameter-golf's ``train_gpt.py`` in an
ignored folder. It needs CUDA.

    python benchmarks/train_parity.py --reference .ref/train_gpt.py [--data ../shared/data] [--steps 200] [--seeds 1 2] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The reference logs "step:12/200 train_loss:5.1234 train_time:3961ms step_avg:330.08ms", its
# pre-quantization score "step:200/200 val_loss:.. val_bpb:.. ..." and "final_int8_zlib_roundtrip val_loss:.. val_bpb:..".
STEP_LOSS = re.compile(r"^step:(\d+)/\d+ train_loss:(\S+) train_time:\d+ms step_avg:([\d.]+)ms", re.M)
VAL_LINE = re.compile(r"^step:\d+/\d+ val_loss:\S+ val_bpb:(\S+)", re.M)
ROUNDTRIP_LINE = re.compile(r"^final_\w+?_roundtrip(?:_exact)? val_loss:\S+ val_bpb:(\S+)", re.M)
TAIL_STEPS = 10


def parse_reference_run(log: str) -> dict:
    """One reference run's losses and scores from its stdout."""
    steps = STEP_LOSS.findall(log)
    val, roundtrip = VAL_LINE.findall(log), ROUNDTRIP_LINE.findall(log)
    if not steps or not val or not roundtrip:
        raise SystemExit("train_parity: the reference's output lacks its step, val or round-trip lines: did it finish?")
    return {"losses": {int(s): float(loss) for s, loss, _ in steps}, "step_ms": float(steps[-1][2]),
            "pre_quant_val_bpb": float(val[-1]), "val_bpb": float(roundtrip[-1])}  # the _exact line, where there is one


def parse_pgolf_run(run_dir: Path) -> dict:
    """One pgolf run's losses and scores from its metrics.jsonl and results.json."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    return {"losses": {r["step"]: r["train_loss"] for r in rows if r["event"] == "train"}, "step_ms": results["step_avg_ms"],
            "pre_quant_val_bpb": results["pre_quant"]["val_bpb"], "val_bpb": results["val_bpb"]}


def tail_loss(run: dict) -> float:
    losses = run["losses"]
    last = sorted(losses)[-TAIL_STEPS:]
    return statistics.fmean(losses[s] for s in last)


def verdict(pgolf_runs: list[dict], reference_runs: list[dict]) -> dict:
    """Seed means of both sides against the reference's spread, for the tail loss and pre-quant val_bpb."""
    out = {}
    for name, metric in (("tail_train_loss", tail_loss), ("pre_quant_val_bpb", lambda r: r["pre_quant_val_bpb"])):
        ours, theirs = [metric(r) for r in pgolf_runs], [metric(r) for r in reference_runs]
        spread = max(theirs) - min(theirs)
        diff = abs(statistics.fmean(ours) - statistics.fmean(theirs))
        out[name] = {"pgolf": ours, "reference": theirs, "reference_spread": spread, "mean_difference": diff,
                     "within_spread": diff <= spread}
    out["within_spread"] = all(v["within_spread"] for v in out.values())
    return out


def earlier_runs(out: Path, steps: int) -> dict:
    """Both sides' runs from an earlier report at ``out`` of the same step count (JSON keys are strings)."""
    if not out.is_file():
        return {"pgolf": {}, "reference": {}}
    earlier = json.loads(out.read_text())
    if earlier.get("steps") != steps:
        raise SystemExit(f"train_parity: {out} holds {earlier.get('steps')}-step runs, not {steps}: drop --resume or the file")
    return {side: {seed: {**run, "losses": {int(k): v for k, v in run["losses"].items()}} for seed, run in earlier.get(side, {}).items()}
            for side in ("pgolf", "reference")}


def data_sets(data: Path) -> list[str]:
    d = data / "datasets"
    return [f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={data / 'tokenizers' / 'fineweb_1024_bpe.model'}"]


def run_settings(steps: int, seed: int) -> list[str]:
    return [f"ITERATIONS={steps}", f"SEED={seed}", "WARMUP_STEPS=20", "TRAIN_LOG_EVERY=1", "VAL_LOSS_EVERY=0",
            "MAX_WALLCLOCK_SECONDS=0"]


def run_pgolf(sets: list[str], runs_dir: Path, run_id: str) -> dict:
    cmd = [sys.executable, "-m", "pgolf.cli", "train", "--preset", "baseline", "--runs-dir", str(runs_dir),
           *(f"--set={item}" for item in [*sets, f"RUN_ID={run_id}"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if proc.returncode != 0:
        raise SystemExit(f"train_parity: pgolf train exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return parse_pgolf_run(runs_dir / run_id)


def run_reference(script: Path, sets: list[str], scratch: Path) -> dict:
    from pgolf.bench.reference import link_data, reference_env
    from pgolf.presets import build_config

    cfg = build_config("baseline", sets, environ={})
    folder = scratch / f"reference_{cfg.train.seed}"
    env = {**os.environ, **reference_env(cfg, link_data(cfg, folder / "data"), cfg.train.iterations, cfg.train.warmup_steps),
           "TRAIN_LOG_EVERY": "1"}  # every step's loss (reference_env logs only the last)
    proc = subprocess.run([sys.executable, str(script.resolve())], cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"train_parity: the reference exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return parse_reference_run(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="the challenge's train_gpt.py (a local copy)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/train_parity_<device>.json")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs an earlier call wrote to --out with the same steps, and do only the rest")
    args = parser.parse_args(argv)

    import torch

    from pgolf.bench.reference import check_reference_possible
    from pgolf.errors import PgolfError
    from pgolf.runtime import device_name, git_commit, versions
    from pgolf.train.rundir import write_json_atomic

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_reference_possible(args.reference, device.type, 1)
    except PgolfError as exc:
        raise SystemExit(f"train_parity: {exc}") from None
    name = device_name(device)
    out = args.out or REPO / "benchmarks" / "results" / f"train_parity_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.json"
    report = {"what": f"pgolf train --preset baseline vs the reference train_gpt.py: {args.steps} steps per seed, same data",
              "commit": git_commit(), "device": name, "versions": versions(), "date": time.strftime("%Y-%m-%d"),
              "steps": args.steps, "seeds": args.seeds, "pgolf": {}, "reference": {}}
    if args.resume:
        report.update(earlier_runs(out, args.steps))
    with tempfile.TemporaryDirectory(prefix="pgolf-parity-") as scratch:
        for seed in args.seeds:
            sets = data_sets(args.data) + run_settings(args.steps, seed)
            if str(seed) not in report["pgolf"]:
                report["pgolf"][str(seed)] = run_pgolf(sets, Path(scratch) / "runs", f"parity_seed{seed}")
                write_json_atomic(out, report)
            if str(seed) not in report["reference"]:
                report["reference"][str(seed)] = run_reference(args.reference, sets, Path(scratch))
                write_json_atomic(out, report)
    report["pgolf"] = {str(s): report["pgolf"][str(s)] for s in args.seeds}
    report["reference"] = {str(s): report["reference"][str(s)] for s in args.seeds}
    report["verdict"] = verdict(list(report["pgolf"].values()), list(report["reference"].values()))
    write_json_atomic(out, report)
    print(json.dumps(report["verdict"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
