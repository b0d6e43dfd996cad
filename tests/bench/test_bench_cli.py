"""`pgolf bench train|eval` on CPU with tiny_cpu: the JSON's schema and sane values (never timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgolf.bench.flops import forward_flops_per_token, sliding_flops_per_token, train_flops_per_token
from pgolf.presets import tiny_cpu

MEASUREMENT_KEYS = {
    "mode", "steps", "warmup_steps", "tokens", "total_ms", "step_ms", "tokens_per_s", "flops_per_token",
    "peak_flops_per_device", "mfu", "device", "world_size", "attn_backend", "compiled",
    "graphs_compiled_in_warmup", "recompiles_in_timed_run", "peak_memory_mib", "phases_ms_per_step",
}
REPORT_KEYS = {
    "what", "date_utc", "preset", "git_commit", "source_sha256", "device", "world_size", "versions",
    "flops_formula", "config", "pgolf", "reference",
}


def data_args(shared_data: Path) -> list[str]:
    d = shared_data / "datasets"
    return [
        "--set", f"DATA_PATH={d / 'fineweb10B_sp1024_trainsample'}",
        "--set", f"VAL_FILES={d / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        "--set", f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        "--set", "VAL_MAX_TOKENS=5000",  # 39 windows of 128: two batches of 16 and a tail of 7
    ]


def run_bench(run_pgolf, shared_data, out: Path | None, *args: str) -> tuple[dict, Path, str]:
    """``out`` None: no --out, the report goes to the current folder. Returns the report, its file, stderr."""
    code, stdout, stderr = run_pgolf(["bench", *args, "--preset", "tiny_cpu", *data_args(shared_data),
                                      *(["--out", str(out)] if out else []), "--json"])
    assert code == 0, stderr
    files = list((out or Path.cwd()).glob("*.json"))
    assert len(files) == 1
    report = json.loads(files[0].read_text())
    assert report == json.loads(stdout.strip().splitlines()[-1])
    return report, files[0], stderr


def check_common(report: dict, mode: str) -> dict:
    assert set(report) == REPORT_KEYS
    m = report["pgolf"]
    assert set(m) == MEASUREMENT_KEYS
    assert m["mode"] == mode and report["preset"] == "tiny_cpu"
    assert report["versions"]["torch"] and len(report["source_sha256"]) == 64
    assert report["device"].startswith("cpu") and m["world_size"] == 1
    assert m["total_ms"] > 0 and m["step_ms"] > 0 and m["tokens_per_s"] > 0
    assert m["tokens_per_s"] == pytest.approx(m["tokens"] / (m["total_ms"] / 1000))
    # CPU: no peak FLOP/s to divide by and no CUDA allocator to ask
    assert m["peak_flops_per_device"] is None and m["mfu"] is None and m["peak_memory_mib"] is None
    assert m["attn_backend"] == "sdpa" and m["compiled"] is False
    assert m["recompiles_in_timed_run"] == 0
    assert report["reference"] is None
    return m


def test_bench_train_json(run_pgolf, shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # by default the report goes here, not into a repository's benchmarks/results
    monkeypatch.setenv("PGOLF_PROGRESS", "lines")  # every phase's two lines at once, as a slow GPU run's log shows them
    report, path, stderr = run_bench(run_pgolf, shared_data, None, "train", "--steps", "1")
    # never silent while it compiles for minutes (the first H200 run's log said nothing for 150 s)
    for label in ("bench: warm-up", "bench: timed steps", "bench: phase-timed steps"):
        assert f"{label}: done in" in stderr, stderr
    assert path.parent == tmp_path
    assert path.name.endswith("_cpu_tiny_cpu_train.json")
    m = check_common(report, "train")
    cfg = tiny_cpu()
    assert m["steps"] == 1 and m["warmup_steps"] == 2  # tiny_cpu has WARMUP_STEPS=0; the bench needs 2
    assert m["tokens"] == cfg.train.train_batch_tokens
    assert m["flops_per_token"] == train_flops_per_token(cfg.model, cfg.train.train_seq_len)
    assert set(m["phases_ms_per_step"]) == {"data", "forward", "backward", "optimizer"}
    assert all(v > 0 for v in m["phases_ms_per_step"].values())


def test_bench_eval_json(run_pgolf, shared_data, tmp_path):
    report, path, _ = run_bench(run_pgolf, shared_data, tmp_path, "eval")
    assert path.name.endswith("_cpu_tiny_cpu_eval.json")
    m = check_common(report, "eval")
    cfg = tiny_cpu()
    assert m["tokens"] == (5000 // 128) * 128  # every whole window of the first 5000 val tokens scored once
    assert m["flops_per_token"] == forward_flops_per_token(cfg.model, cfg.train.train_seq_len)


def test_bench_sliding_eval_json(run_pgolf, shared_data, tmp_path):
    report, path, _ = run_bench(run_pgolf, shared_data, tmp_path, "eval", "--set", "EVAL_STRIDE=32", "--batch-tokens", "2048")
    assert path.name.endswith("_cpu_tiny_cpu_eval-sliding32.json")
    assert set(report) == REPORT_KEYS
    m = report["pgolf"]
    assert set(m) == MEASUREMENT_KEYS | {"eval_kind", "stride", "doc_isolated", "window_rows", "val_loss", "val_bpb"}
    assert (m["eval_kind"], m["stride"], m["doc_isolated"], m["window_rows"]) == ("sliding", 32, False, 16)
    assert m["tokens"] == 5000  # every target of the stream scored once, the tail past the last whole window too
    assert m["recompiles_in_timed_run"] == 0 and m["compiled"] is False and m["total_ms"] > 0
    assert m["phases_ms_per_step"] == {"sliding": m["total_ms"]}
    cfg = tiny_cpu()
    assert m["flops_per_token"] == sliding_flops_per_token(cfg.model, 128, 32)
    assert m["val_bpb"] > 0 and m["val_loss"] > 0


def test_sliding_flops_count_the_blocks_at_every_window_position_and_the_head_once():
    cfg = tiny_cpu().model
    head = 2 * cfg.model_dim * cfg.vocab_size
    assert sliding_flops_per_token(cfg, 128, 128) == forward_flops_per_token(cfg, 128)  # stride = window: standard
    assert sliding_flops_per_token(cfg, 128, 32) == 4 * (forward_flops_per_token(cfg, 128) - head) + head


def test_reference_on_cpu_fails_with_one_line_before_any_work(run_pgolf, tmp_path):
    script = tmp_path / "train_gpt.py"
    script.write_text("raise SystemExit('must not run')\n")
    code, stdout, stderr = run_pgolf(["bench", "train", "--preset", "tiny_cpu", "--reference", str(script),
                                      "--set", "DATA_PATH=/nonexistent", "--out", str(tmp_path / "out")])
    assert code == 2 and stdout == ""
    assert stderr.strip().count("\n") == 0
    assert "--reference needs a CUDA device" in stderr and "device here: cpu" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
# DDP, or banks reduce-scattered outside DDP, clipping the average or (R22/R44) each rank's own gradient
@pytest.mark.parametrize("parallel_muon", ["0", "1", "1 PGOLF_GRAD_CLIP_LOCAL=1"])
def test_bench_train_on_two_gloo_ranks_times_communication(shared_data, tmp_path, parallel_muon):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pgolf.cli", "bench", "train", "--preset", "tiny_cpu", "--steps", "1",
           "--set", "GRAD_ACCUM_STEPS=0", *(a for item in f"PGOLF_PARALLEL_MUON={parallel_muon}".split() for a in ("--set", item)), "--set", "GRAD_CLIP_NORM=0.3", *data_args(shared_data), "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob("*.json"))
    assert [f.name.split("_", 1)[1] for f in files] == ["2xcpu_tiny_cpu_train.json"]  # rank 0 alone writes
    m = json.loads(files[0].read_text())["pgolf"]
    assert m["world_size"] == 2 and m["tokens"] == tiny_cpu().train.train_batch_tokens
    assert set(m["phases_ms_per_step"]) == {"data", "forward", "backward", "communication", "optimizer"}
    assert m["phases_ms_per_step"]["communication"] > 0
