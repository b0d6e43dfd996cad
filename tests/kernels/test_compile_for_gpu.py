"""The fused kernels compile to cubins for Hopper and Ampere, here, with Triton's own compiler.

The interpreter checks their numbers; this checks what only a real compile can (see
compile_for_gpu.py). A fresh process and an empty Triton cache make every compile real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_for_gpu.py")


def compile_kernels(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_CACHE_DIR": str(tmp_path / "triton-cache"), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("arch", [90, 80])  # H100, A100
def test_every_training_launch_compiles_to_a_cubin(tmp_path, arch):
    proc = compile_kernels(tmp_path, "--arch", str(arch))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok ") == 4 and f"sm_{arch} cubin" in proc.stdout


def test_the_interpreter_is_refused(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stdout
