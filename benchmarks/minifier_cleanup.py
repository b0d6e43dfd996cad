"""What python-minifier's leftovers cost a later bundle build in the same process, side by side.

CPython's parser hands every tree the same instance of each context marker (``Load``...) and
operator (``Add``...). python-minifier annotates the nodes of the tree it minifies with ``_parent``
and ``namespace``, those shared instances included, so afterwards every ``copy.deepcopy`` of any
tree (the bundler copies module trees while inlining) also copies the minified module.
``pgolf.bundle.wrap.minify`` now strips them (``clean_shared_parser_nodes``). Here, in one process,
``bundle_source`` of the tiny_cpu preset is timed after a bare ``python_minifier.minify`` (left
annotated) and after the cleanup, alternating, ``REPEATS`` times each; both sources must be equal.
Writes benchmarks/results/minifier_cleanup.json.

    PYTHONPATH=src python benchmarks/minifier_cleanup.py
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import python_minifier

from pgolf.bundle.build import bundle_source
from pgolf.bundle.wrap import clean_shared_parser_nodes
from pgolf.presets import build_config
from pgolf.runtime import git_commit
from pgolf.train.rundir import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "minifier_cleanup.json"
REPEATS = 2


def timed_build(cfg) -> tuple[float, str]:
    t0 = time.perf_counter()
    source, _ = bundle_source(cfg)
    return time.perf_counter() - t0, source


def main() -> int:
    cfg = build_config("tiny_cpu", environ={})
    _, first = timed_build(cfg)  # warm the caches both sides share (imports, parsed modules)
    seconds: dict[str, list[float]] = {"after_bare_minify": [], "after_cleanup": []}
    sources = set()
    for _ in range(REPEATS):
        python_minifier.minify(first, rename_locals=True)  # leaves the shared nodes annotated
        took, source = timed_build(cfg)
        seconds["after_bare_minify"].append(round(took, 2))
        sources.add(source)
        clean_shared_parser_nodes()
        took, source = timed_build(cfg)
        seconds["after_cleanup"].append(round(took, 2))
        sources.add(source)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    report = {
        "what": "bundle_source(tiny_cpu) in a process where python-minifier already ran: its leftovers kept vs stripped",
        "seconds": seconds, "median_s": medians,
        "slowdown_median": round(medians["after_bare_minify"] / medians["after_cleanup"], 2),
        "identical_output": len(sources) == 1 and first in sources,
        "commit": git_commit(), "device": "cpu", "cpu": platform.machine(), "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0], "python": platform.python_version(),
        "python_minifier": importlib.metadata.version("python-minifier"),
    }
    write_json_atomic(RESULTS, report)
    print(report)
    return 0 if report["identical_output"] else 1


if __name__ == "__main__":
    sys.exit(main())
