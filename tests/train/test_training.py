"""End-to-end training on the real train sample: loss goes down, runs are reproducible and
self-describing, a golden loss curve guards against silent regressions, and 2 gloo ranks
follow the single-process trajectory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pgolf
from pgolf.presets import build_config
from pgolf.train.loop import ARTIFACT_NAME, CHECKPOINT_NAME, train

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tiny_cpu_loss_curve.json"
GOLDEN_STEPS = 20
GOLDEN_TOLERANCE = 2e-3  # nats; CPU kernels differ slightly between machines, regressions move far more


def tiny_config_overrides(shared_data: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        f"ITERATIONS={steps}", "VAL_MAX_TOKENS=4096", "TRAIN_LOG_EVERY=0", *extra,
    ]


def tiny_config(shared_data: Path, steps: int, *extra: str):
    return build_config("tiny_cpu", tiny_config_overrides(shared_data, steps, *extra), environ={})


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if r["event"] == "train"]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    results = train(tiny_config(shared_data, 40, "RUN_ID=a"), runs_dir=runs, echo=False)
    return runs / "a", results


def test_loss_goes_down(trained):
    run_dir, results = trained
    losses = train_losses(run_dir)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5
    assert results["pre_quant"]["val_loss"] < 6.5  # ln(1024) = 6.93 at init


def test_run_directory_is_self_describing(trained):
    run_dir, results = trained
    for name in ("train.log", "metrics.jsonl", "config.json", "results.json", CHECKPOINT_NAME, ARTIFACT_NAME):
        assert (run_dir / name).is_file(), name
    log = (run_dir / "train.log").read_text()
    for needle in ("source_sha256:", "versions:", "device:", '"num_layers": 2', "final_roundtrip_exact"):
        assert needle in log
    saved = json.loads((run_dir / "results.json").read_text())
    for key in ("pre_quant", "post_quant", "val_loss", "val_bpb", "bytes_model", "bytes_code", "bytes_total",
                "steps", "train_time_s", "eval_time_s", "tokens_per_s", "device", "versions"):
        assert key in saved, key
    assert saved["bytes_model"] == (run_dir / ARTIFACT_NAME).stat().st_size
    # code bytes: the files the run lists, measured on disk here (LF-only UTF-8: file bytes == text bytes)
    src = Path(pgolf.__file__).resolve().parent.parent
    assert {"pgolf/train/loop.py", "pgolf/eval/evaluate.py", "pgolf/model/gpt.py", "pgolf/tokenizer/luts.py"} <= set(saved["code_files"])
    assert saved["bytes_code"] == sum(os.path.getsize(src / name) for name in saved["code_files"])
    assert saved["bytes_total"] == os.path.getsize(run_dir / ARTIFACT_NAME) + saved["bytes_code"]
    assert abs(saved["post_quant"]["val_bpb"] - saved["pre_quant"]["val_bpb"]) < 0.05


def test_a_policy_that_quantizes_nothing_says_so(shared_data, trained, tmp_path, capsys):
    from pgolf.train.cli import print_summary

    run_dir, results = trained  # tiny_cpu, the reference int8 rule: every tensor is at or under 65,536 elements
    assert results["quantized_tensors"] == 0
    print_summary(results)
    assert "warning: the quant policy quantized no tensor" in capsys.readouterr().out
    lowered = train(tiny_config(shared_data, 2, "RUN_ID=q", "PGOLF_QUANT_SCHEME=int8,small=1024"), runs_dir=tmp_path, echo=False)
    assert lowered["quantized_tensors"] == 13  # the 12 block linears (64x64 and 128x64) and the embedding
    print_summary(lowered)
    assert "warning" not in capsys.readouterr().out


def test_same_seed_same_losses(shared_data, trained, tmp_path):
    run_dir, _ = trained
    train(tiny_config(shared_data, 40, "RUN_ID=b"), runs_dir=tmp_path, echo=False)
    assert train_losses(tmp_path / "b") == train_losses(run_dir)


def test_golden_loss_curve(shared_data, tmp_path):
    train(tiny_config(shared_data, GOLDEN_STEPS, "RUN_ID=g"), runs_dir=tmp_path, echo=False)
    losses = train_losses(tmp_path / "g")
    if os.environ.get("PGOLF_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"preset": "tiny_cpu", "steps": GOLDEN_STEPS, "train_loss": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["train_loss"]
    worst = max(abs(a - b) for a, b in zip(losses, golden, strict=True))
    assert worst < GOLDEN_TOLERANCE, f"loss curve moved by {worst:.2e} nats (PGOLF_UPDATE_GOLDEN=1 to accept)"


def test_run_scores_the_configured_sliding_and_ttt_phases_as_pgolf_eval_does(shared_data, tmp_path, run_pgolf):
    """The run's final number is its artifact's last configured phase, the same as `pgolf eval --artifact` gives."""
    phases = ["EVAL_STRIDE=64", "PGOLF_TTT=sgd", "TTT_CHUNK_TOKENS=1024", "TTT_EPOCHS=1", "TTT_BATCH_SEQS=4"]
    results = train(tiny_config(shared_data, 6, "RUN_ID=p", *phases), runs_dir=tmp_path, echo=False)
    assert list(results["phases"]) == ["standard", "sliding", "ttt"] and results["final_phase"] == "ttt"
    assert results["val_bpb"] == results["phases"]["ttt"]["val_bpb"]
    assert results["phases"]["standard"]["val_bpb"] == results["post_quant"]["val_bpb"]
    assert results["phases"]["sliding"]["stride"] == 64
    assert results["eval_time_s"] == pytest.approx(sum(p["eval_time_s"] for p in results["phases"].values()))
    log = (tmp_path / "p" / "train.log").read_text()
    for line in ("final_roundtrip_exact", "final_sliding_window val_loss", "final_sliding_window_exact", "final_ttt_exact"):
        assert line in log, line
    cfg = tiny_config(shared_data, 6)
    code, out, _ = run_pgolf(["eval", "--artifact", str(tmp_path / "p" / ARTIFACT_NAME), "--max-tokens", "4096",
                              "--batch-tokens", str(cfg.eval.val_batch_size), "--json"])
    assert code == 0
    scored = json.loads(out.splitlines()[-1])["phases"]
    for name in ("standard", "sliding", "ttt"):
        assert scored[name]["val_bpb"] == pytest.approx(results["phases"][name]["val_bpb"], rel=1e-9, abs=0), name
        assert scored[name]["tokens"] == results["phases"][name]["tokens"], name


# In a fresh process: train, then measure every pgolf module file the process holds on disk.
MEASURE_AFTER_THE_RUN = textwrap.dedent('''
    import json, os, sys
    from pgolf.presets import build_config
    from pgolf.train.loop import train
    results = train(build_config("tiny_cpu", json.loads(sys.argv[1]), environ={}), runs_dir=sys.argv[2], echo=False)
    files = {os.path.realpath(m.__file__) for n, m in list(sys.modules.items())
             if (n == "pgolf" or n.startswith("pgolf.")) and isinstance(getattr(m, "__file__", None), str)}
    print(json.dumps({"bytes_code": results["bytes_code"], "on_disk": sum(os.path.getsize(f) for f in files)}))
''')


def test_a_package_run_counts_the_code_its_evaluation_phases_imported(shared_data, tmp_path):
    """LoRA TTT imports its modules after the export; they are code the run executed and count in bytes_code,
    results.json, the log's last size line and the cap verdict alike."""
    overrides = tiny_config_overrides(shared_data, 2, "RUN_ID=lora", "PGOLF_TTT=lora", "TTT_CHUNK_SIZE=128",
                                      "TTT_EVAL_SEQ_LEN=128", "VAL_MAX_TOKENS=1024")
    env = {k: v for k, v in os.environ.items() if k != "PGOLF_CODE_FILES"}  # package mode
    out = subprocess.run([sys.executable, "-c", MEASURE_AFTER_THE_RUN, json.dumps(overrides), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["bytes_code"] == measured["on_disk"]
    saved = json.loads((tmp_path / "lora" / "results.json").read_text())
    assert saved["bytes_code"] == measured["on_disk"]
    assert saved["bytes_total"] == os.path.getsize(tmp_path / "lora" / ARTIFACT_NAME) + measured["on_disk"]
    sizes = re.findall(r"^artifact [\d,]+ bytes = model [\d,]+ \+ code ([\d,]+) ", (tmp_path / "lora" / "train.log").read_text(), re.M)
    assert int(sizes[-1].replace(",", "")) == measured["on_disk"]


def train_single_and_two_gloo_ranks(shared_data: Path, tmp_path: Path, common: list[str], single_only: tuple = (),
                                    ranks_only: tuple = ()) -> tuple[list[float], list[float]]:
    """4 steps in this process (run "single") and under torchrun on 2 gloo ranks (run "ddp"); their train losses.

    ``single_only`` / ``ranks_only``: settings for one side only (e.g. plain Muon vs Parallel Muon).
    """
    train(tiny_config(shared_data, 4, "RUN_ID=single", *common, *single_only), runs_dir=tmp_path, echo=False)
    return train_losses(tmp_path / "single"), train_two_gloo_ranks(shared_data, tmp_path, "ddp", *common, *ranks_only)


def train_two_gloo_ranks(shared_data: Path, tmp_path: Path, run_id: str, *settings: str) -> list[float]:
    """4 steps of ``pgolf train`` under torchrun on 2 gloo ranks (run ``run_id``); its train losses."""
    sets = [f"--set={item}" for item in tiny_config_overrides(shared_data, 4, f"RUN_ID={run_id}", *settings)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pgolf.cli", "train", "--preset", "tiny_cpu", "--runs-dir", str(tmp_path), *sets]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return train_losses(tmp_path / run_id)


def test_two_gloo_ranks_follow_the_single_process_run(shared_data, tmp_path):
    # the final sliding and TTT phases too split their work over the ranks
    common = ["GRAD_ACCUM_STEPS=0", "TRAIN_BATCH_TOKENS=2048", "TRAIN_SEQ_LEN=128", "EVAL_STRIDE=64", "PGOLF_TTT=sgd",
              "TTT_CHUNK_TOKENS=1024", "TTT_EPOCHS=1", "TTT_BATCH_SEQS=4"]
    single, ddp = train_single_and_two_gloo_ranks(shared_data, tmp_path, common)
    assert len(single) == len(ddp) == 4
    assert max(abs(a - b) for a, b in zip(single, ddp)) < 1e-4
    assert "world_size: 2" in (tmp_path / "ddp" / "train.log").read_text()
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("single", "ddp")]
    assert results[0]["final_phase"] == results[1]["final_phase"] == "ttt"
    for phase in ("sliding", "ttt"):
        assert results[0]["phases"][phase]["tokens"] == results[1]["phases"][phase]["tokens"] == 4096
        assert abs(results[0]["phases"][phase]["val_loss"] - results[1]["phases"][phase]["val_loss"]) < 1e-4
    assert abs(results[0]["val_loss"] - results[1]["val_loss"]) < 1e-4



def test_compile_warmup_is_undone(shared_data, trained, tmp_path):
    """Warm-up steps train for real, then weights, optimizer state and loader are restored."""
    run_dir, _ = trained
    train(tiny_config(shared_data, 40, "RUN_ID=w", "WARMUP_STEPS=3"), runs_dir=tmp_path, echo=False)
    assert "warmup_step:3/3" in (tmp_path / "w" / "train.log").read_text()
    assert train_losses(tmp_path / "w") == train_losses(run_dir)


def test_wallclock_cap_stops_the_run(shared_data, tmp_path):
    results = train(tiny_config(shared_data, 100_000, "RUN_ID=c", "MAX_WALLCLOCK_SECONDS=2"), runs_dir=tmp_path, echo=False)
    assert results["stopped_early"] and results["steps"] < 100_000
    assert 2.0 <= results["train_time_s"] < 10.0
    assert "stopping_early: wallclock_cap" in (tmp_path / "c" / "train.log").read_text()


def test_validation_during_training(shared_data, tmp_path):
    """Validation runs under inference_mode; training must resume after it (RoPE tables rebuilt)."""
    results = train(tiny_config(shared_data, 6, "RUN_ID=v", "VAL_LOSS_EVERY=2"), runs_dir=tmp_path, echo=False)
    log = (tmp_path / "v" / "train.log").read_text()
    assert all(f"step:{n}/6 val_loss" in log for n in (0, 2, 4, 6))
    assert results["steps"] == 6


def test_recurrence_switches_on_at_a_fraction_of_training(shared_data, tmp_path):
    results = train(tiny_config(shared_data, 4, "RUN_ID=r", "NUM_LOOPS=1", "LOOP_START=0", "LOOP_END=1",
                                "ENABLE_LOOPING_AT=0.5"), runs_dir=tmp_path, echo=False)
    log = (tmp_path / "r" / "train.log").read_text()
    assert "recurrence:off step:0 layers:2" in log and "recurrence:on step:2 layers:4" in log
    assert results["steps"] == 4
