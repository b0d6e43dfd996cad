"""``pgolf seeds``: one configuration, several seeds, run one after another, each in a fresh process.

Each seed is its own ``pgolf train`` (or, with a bundle, the shipped ``train_gpt.py`` itself, so the
logs are produced by the script that is submitted), under ``torchrun`` when ``nproc > 1``. Only
``SEED`` and ``RUN_ID`` change between seeds. Every seed is kept and reported, including failures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev

from pgolf.config import override_env
from pgolf.errors import PgolfError
from pgolf.experiments.read import Run, load_run
from pgolf.files import make_folder, writable_problem
from pgolf.train.lifecycle import reuse_problem
from pgolf.train.rundir import new_run_id


@dataclass(frozen=True)
class SeedPlan:
    preset: str
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    runs_dir: Path
    nproc: int = 1
    bundle: Path | None = None  # run this train_gpt.py instead of the package
    prefix: str = ""


def _launcher(nproc: int) -> list[str]:
    if nproc <= 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def seed_command(plan: SeedPlan, seed: int, run_id: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one seed's run."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if plan.bundle is not None:
        # The overrides go in as env too: a bundle built from them already holds them, and an existing
        # bundle (--use-existing-bundle) must still run the configuration asked for.
        env.update(override_env(plan.overrides), SEED=str(seed), RUN_ID=run_id, PGOLF_RUNS_DIR=str(plan.runs_dir))
        return [*_launcher(plan.nproc), str(plan.bundle)], env
    env.update(SEED=str(seed), RUN_ID=run_id)
    sets = [f"--set={item}" for item in plan.overrides] + [f"--set=SEED={seed}", f"--set=RUN_ID={run_id}"]
    cmd = [*_launcher(plan.nproc), "-m", "pgolf.cli", "train", "--preset", plan.preset, "--runs-dir", str(plan.runs_dir), *sets]
    return cmd, env


@dataclass(frozen=True)
class SeedOutcome:
    seed: int
    run_id: str
    returncode: int
    run: Run | None


def run_seeds(plan: SeedPlan, echo=print) -> list[SeedOutcome]:
    if len(set(plan.seeds)) != len(plan.seeds):
        raise PgolfError(f"--seeds {' '.join(map(str, plan.seeds))}: a seed is repeated")
    if plan.bundle is not None and not plan.bundle.is_file():
        raise PgolfError(f"{plan.bundle}: bundle not found")
    prefix = plan.prefix or new_run_id()
    advice = "choose another --name"
    problem = writable_problem(plan.runs_dir, "--runs-dir") or next(
        filter(None, (reuse_problem(plan.runs_dir / f"{prefix}_seed{seed}", False, advice) for seed in plan.seeds)), None)
    if problem:  # before the first seed trains
        raise PgolfError(problem)
    make_folder(plan.runs_dir)
    outcomes = []
    for seed in plan.seeds:
        run_id = f"{prefix}_seed{seed}"
        cmd, env = seed_command(plan, seed, run_id)
        echo(f"seed {seed}: {' '.join(cmd)}")
        code = subprocess.run(cmd, env=env).returncode
        run = load_run(plan.runs_dir / run_id) if code == 0 else None
        outcomes.append(SeedOutcome(seed, run_id, code, run))
        echo(f"seed {seed}: " + (f"val_bpb {run.metric('val_bpb'):.8f}" if run else f"FAILED (exit code {code})"))
    return outcomes


def summary_table(outcomes: list[SeedOutcome]) -> str:
    lines = [f"{'seed':>8} {'val_bpb':>12} {'val_loss':>12} {'bytes_total':>12} {'steps':>7}  run"]
    good = [o for o in outcomes if o.run]
    for o in outcomes:
        if o.run is None:
            lines.append(f"{o.seed:>8} {'failed':>12} {'':>12} {'':>12} {'':>7}  {o.run_id} (exit {o.returncode})")
            continue
        r = o.run.results
        lines.append(f"{o.seed:>8} {r['val_bpb']:>12.8f} {r['val_loss']:>12.8f} {r['bytes_total']:>12,} {r['steps']:>7}  {o.run.path}")
    if len(good) >= 2:
        bpb = [o.run.metric("val_bpb") for o in good]
        lines.append(f"{'mean':>8} {fmean(bpb):>12.8f}  std {stdev(bpb):.8f} over {len(good)} seeds")
    return "\n".join(lines)
