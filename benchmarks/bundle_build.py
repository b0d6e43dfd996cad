"""Time building the baseline bundle with pgolf's AST walker against the standard library's, side by side.

The bundler walks the whole program many times per build. ``pgolf.bundle.names.walk``/``children``
visit the same nodes in the same order as ``ast.walk``/``ast.iter_child_nodes``, minus the
Load/Store/Del markers and the fields that never hold a node. Here both walkers build the same
bundle, alternating, ``REPEATS`` times each; the readable sources must be identical. Writes
benchmarks/results/bundle_build.json with commit, machine load and versions.

    PYTHONPATH=src python benchmarks/bundle_build.py
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from pgolf.bundle import names, propagate, shake, specialise, trivial, types
from pgolf.bundle.build import bundle_source
from pgolf.presets import build_config
from pgolf.runtime import git_commit
from pgolf.train.rundir import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "bundle_build.json"
REPEATS = 3
USERS = (names, propagate, shake, specialise, trivial, types)  # the modules that call walk/children


@contextlib.contextmanager
def standard_walker():
    """Every user of pgolf's walker calls the standard library's instead, for the duration."""
    saved = [(m, n, getattr(m, n)) for m in USERS for n in ("walk", "children") if hasattr(m, n)]
    for module, name, _ in saved:
        setattr(module, name, ast.walk if name == "walk" else lambda node: list(ast.iter_child_nodes(node)))
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def timed(cfg) -> tuple[float, str]:
    t0 = time.perf_counter()
    source, _ = bundle_source(cfg)
    return time.perf_counter() - t0, source


def main() -> int:
    cfg = build_config("baseline", environ={})
    bundle_source(cfg)  # warm the caches both sides share (imports, parsed modules)
    times: dict[str, list[float]] = {"pgolf_walker": [], "ast_walk": []}
    sources: dict[str, str] = {}
    for _ in range(REPEATS):
        seconds, sources["pgolf_walker"] = timed(cfg)
        times["pgolf_walker"].append(seconds)
        with standard_walker():
            seconds, sources["ast_walk"] = timed(cfg)
        times["ast_walk"].append(seconds)
    if sources["pgolf_walker"] != sources["ast_walk"]:
        raise SystemExit("the two walkers built different bundles")
    medians = {k: statistics.median(v) for k, v in times.items()}
    commit = git_commit()
    result = {
        "what": "bundle_source(baseline): readable single-file source, specialised and shaken (no minify/wrap)",
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 2) for k, v in medians.items()},
        "speedup_median": round(medians["ast_walk"] / medians["pgolf_walker"], 2),
        "identical_output": True, "commit": commit, "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "loadavg_1m": os.getloadavg()[0], "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
