"""``pgolf sweep``: train a grid (or a random sample of it) of configurations, index them, name the best.

Each combination is its own ``pgolf train`` in a fresh process (under torchrun with ``nproc > 1``),
with the combination's ``--set`` overrides after the shared ones. Runs are tagged with the sweep
name in the runs index, so ``pgolf runs list --sweep NAME --sort val_bpb`` shows them later.
Every value is checked against the config schema before anything runs.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.presets import build_config
from pgolf.experiments.index import register
from pgolf.experiments.read import Run, load_run
from pgolf.train.rundir import new_run_id


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise PgolfError(f"--grid {item!r}: expected KEY=v1,v2,...")
        grid.append((key.strip(), options))
    if len({k for k, _ in grid}) != len(grid):
        raise PgolfError("--grid: a key appears twice")
    return grid


def combinations(grid: list[tuple[str, list[str]]], sample: int | None = None, seed: int = 0) -> list[list[str]]:
    """Every combination as ``KEY=value`` overrides, or ``sample`` distinct ones drawn at random."""
    combos = [[f"{k}={v}" for (k, _), v in zip(grid, values)] for values in itertools.product(*(vs for _, vs in grid))]
    if sample is not None:
        if sample <= 0:
            raise PgolfError(f"--random {sample}: must be positive")
        combos = random.Random(seed).sample(combos, min(sample, len(combos)))
    return combos


@dataclass(frozen=True)
class SweepResult:
    overrides: tuple[str, ...]
    run_id: str
    returncode: int
    run: Run | None


def run_sweep(preset: str, shared: list[str], combos: list[list[str]], runs_dir: Path, name: str = "", nproc: int = 1,
              echo=print) -> list[SweepResult]:
    for combo in combos:  # fail before training anything
        build_config(preset, shared + combo)
    name = name or f"sweep-{new_run_id()}"
    launcher = [sys.executable] if nproc <= 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    results = []
    for i, combo in enumerate(combos):
        run_id = f"{name}_{i:03d}"
        sets = [f"--set={s}" for s in shared + combo + [f"RUN_ID={run_id}"]]
        cmd = [*launcher, "-m", "pgolf.cli", "train", "--preset", preset, "--runs-dir", str(runs_dir), *sets]
        echo(f"[{i + 1}/{len(combos)}] {' '.join(combo)}")
        code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
        run = None
        if code == 0:
            register(runs_dir, runs_dir / run_id, sweep=name)
            run = load_run(runs_dir / run_id)
        echo(f"    -> " + (f"val_bpb {run.metric('val_bpb'):.6f}" if run else f"FAILED (exit code {code})"))
        results.append(SweepResult(tuple(combo), run_id, code, run))
    return results


def best(results: list[SweepResult]) -> SweepResult | None:
    done = [r for r in results if r.run is not None]
    return min(done, key=lambda r: r.run.metric("val_bpb")) if done else None
