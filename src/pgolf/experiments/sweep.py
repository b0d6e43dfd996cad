"""``pgolf sweep``: train a grid (or a random sample of it) of configurations, index them, name the best.

Each combination is its own ``pgolf train`` in a fresh process (under torchrun with ``nproc > 1``),
with the combination's ``--set`` overrides after the shared ones. Runs are tagged with the sweep
name in the runs index, so ``pgolf runs list --sweep NAME --sort val_bpb`` shows them later.
Every value is checked against the config schema, and the sweep's run folders (``NAME_000``, ...)
against the runs folder, before anything runs: a reused name is refused unless ``--replace``.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.presets import build_config
from pgolf.experiments.index import register
from pgolf.experiments.read import Run, load_run
from pgolf.files import writable_problem
from pgolf.train.lifecycle import reuse_problem, run_state
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


def check_sweep_free(runs_dir: Path, name: str, count: int, replace: bool) -> None:
    """Refuse a sweep whose run folders hold runs (a reused --name), unless they are to be replaced."""
    problem = writable_problem(runs_dir, "--runs-dir")
    advice = "choose another --name, or pass --replace to delete its runs and train them again"
    problem = problem or next(filter(None, (reuse_problem(runs_dir / f"{name}_{i:03d}", replace, advice) for i in range(count))), None)
    if problem:
        raise PgolfError(f"sweep {name}: {problem}")


def run_sweep(preset: str, shared: list[str], combos: list[list[str]], runs_dir: Path, name: str = "", nproc: int = 1,
              echo=print, replace: bool = False) -> list[SweepResult]:
    for combo in combos:  # fail before training anything
        build_config(preset, shared + combo)
    name = name or f"sweep-{new_run_id()}"
    check_sweep_free(runs_dir, name, len(combos), replace)
    launcher = [sys.executable] if nproc <= 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    results = []
    for i, combo in enumerate(combos):
        run_id = f"{name}_{i:03d}"
        sets = [f"--set={s}" for s in shared + combo + [f"RUN_ID={run_id}"]]
        cmd = [*launcher, "-m", "pgolf.cli", "train", "--preset", preset, "--runs-dir", str(runs_dir), *sets,
               *(["--replace"] if replace else [])]
        echo(f"[{i + 1}/{len(combos)}] {' '.join(combo)}")
        t0 = time.perf_counter()
        # its log lines are in its train.log; its stderr (progress of its long phases, errors) is the sweep's
        code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
        seconds = time.perf_counter() - t0
        run = None
        if run_state(runs_dir / run_id) is not None:  # failed runs too: `pgolf runs list --sweep` shows why
            register(runs_dir, runs_dir / run_id, sweep=name)
        if code == 0:
            run = load_run(runs_dir / run_id)
        echo(f"    -> " + (f"val_bpb {run.metric('val_bpb'):.6f}" if run else f"FAILED (exit code {code})") + f" in {seconds:.1f} s")
        results.append(SweepResult(tuple(combo), run_id, code, run))
    return results


def best(results: list[SweepResult]) -> SweepResult | None:
    done = [r for r in results if r.run is not None]
    return min(done, key=lambda r: r.run.metric("val_bpb")) if done else None
