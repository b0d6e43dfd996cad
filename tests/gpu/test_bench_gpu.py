"""`pgolf bench` on CUDA: compiled, no recompiles, memory and MFU reported; optionally vs the reference.

The reference comparison runs when PGOLF_REFERENCE_SCRIPT points at a local copy of the challenge's
train_gpt.py (never committed). Skipped without CUDA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture()
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def bench_args(shared_data: Path, out: Path, *extra: str) -> list[str]:
    d = shared_data / "datasets"
    sets = [f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "PGOLF_DEVICE=cuda", "PGOLF_COMPILE=1", *extra]
    return [arg for item in sets for arg in ("--set", item)] + ["--out", str(out), "--json"]


def test_compiled_train_bench_on_cuda(cuda, run_pgolf, shared_data, tmp_path):
    code, stdout, stderr = run_pgolf(["bench", "train", "--preset", "tiny_cpu", "--steps", "5", *bench_args(shared_data, tmp_path)])
    assert code == 0, stderr
    m = json.loads(stdout.strip().splitlines()[-1])["pgolf"]
    assert m["compiled"] and m["graphs_compiled_in_warmup"] >= 1 and m["recompiles_in_timed_run"] == 0
    assert m["peak_memory_mib"] > 0
    assert (m["mfu"] is None) == (m["peak_flops_per_device"] is None)
    if m["mfu"] is not None:
        assert 0 < m["mfu"] < 1


def test_compiled_eval_bench_on_cuda(cuda, run_pgolf, shared_data, tmp_path):
    code, stdout, stderr = run_pgolf(["bench", "eval", "--preset", "tiny_cpu", *bench_args(shared_data, tmp_path, "VAL_MAX_TOKENS=100000")])
    assert code == 0, stderr  # a ragged last batch the warm-up missed would have failed the run
    assert json.loads(stdout.strip().splitlines()[-1])["pgolf"]["recompiles_in_timed_run"] == 0


def test_bench_against_the_reference(cuda, run_pgolf, shared_data, tmp_path):
    script = os.environ.get("PGOLF_REFERENCE_SCRIPT")
    if not script:
        pytest.skip("set PGOLF_REFERENCE_SCRIPT to a local copy of the reference train_gpt.py")
    d = shared_data / "datasets"
    sets = [f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}", f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}", "PGOLF_DEVICE=cuda"]
    args = [arg for item in sets for arg in ("--set", item)]
    code, stdout, stderr = run_pgolf(["bench", "train", "--preset", "baseline", "--steps", "10", "--reference", script,
                                      *args, "--out", str(tmp_path), "--json"])
    assert code == 0, stderr
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["reference"]["steps"] == 10 and report["reference"]["step_ms"] > 0
    assert report["speedup_vs_reference"] > 0
