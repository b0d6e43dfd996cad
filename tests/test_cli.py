"""The top-level command line: help for every verb without the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "numpy", "sentencepiece", "matplotlib", "triton")


def test_building_the_parser_imports_no_heavy_library():
    # `pgolf --help` and `pgolf VERB --help` build the whole parser: with torch imported that costs
    # seconds; without it, well under the 0.5 s a help screen may take.
    code = ("import sys; from pgolf.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
