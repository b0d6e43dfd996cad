"""Run the challenge's reference ``train_gpt.py`` beside pgolf: same device, configuration and data.

The reference is a script, not a library: it is launched as a subprocess in a scratch folder (it
writes ``logs/`` and its ``final_model*`` files into its working directory) with the configuration
passed through the environment variables it reads, and its numbers are read back from its log
lines. Its data folder is a scratch folder of links to pgolf's train and val shards, because the
reference only reads ``DATA_PATH/fineweb_{train,val}_*.bin``.

The reference needs CUDA (it raises ``CUDA is required`` otherwise), always compiles, always uses
``grad_accum_steps = 8 // WORLD_SIZE`` and always scores the full val split; configurations it
cannot express are refused up front with one line, rather than compared unlike with unlike.

A record's own script is a reference too: :data:`PROFILES` says, per preset, which script it is (a
string its text must contain) and the environment variables the script reads under other names.
A field the script does not read is accepted only at the preset's value, since the preset
describes that record (the script hard-codes it); for any other preset the comparison is with the
challenge's ``train_gpt.py`` and the baseline's values. With ``EVAL_STRIDE`` > 0 (scripts that
read it), eval mode compares the script's own sliding evaluation (``final_sliding_window_eval``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.config import Config, iter_fields
from pgolf.data.shards import resolve_shards
from pgolf.errors import PgolfError
from pgolf.presets import resolve_preset

# Fields that set up the run (paths, logging, step counts, which kernels pgolf uses) rather than what is
# computed; the comparison overrides or links them, or checks them separately below.
NOT_COMPARED = {
    "data.data_path", "data.tokenizer_path", "data.train_files", "data.val_files", "train.run_id",
    "train.iterations", "train.warmup_steps", "train.val_loss_every", "train.train_log_every",
    "train.max_wallclock_seconds", "train.grad_accum_steps", "train.compile", "train.attn_backend",
    "train.device", "train.fused_ce", "train.fused_mlp", "eval.val_max_tokens",
}
STEP_LINE = re.compile(r"^step:(\d+)/(\d+) train_loss:\S+ train_time:(\d+)ms step_avg:([\d.]+)ms", re.M)
PEAK_LINE = re.compile(r"^peak memory allocated: (\d+) MiB reserved: (\d+) MiB", re.M)
EVAL_LINE = re.compile(r"^final_\w+_roundtrip val_loss:\S+ val_bpb:\S+ eval_time:(\d+)ms", re.M)
# R15: "final_sliding_window_eval stride:64 val_loss:.. val_bpb:.. eval_time:..ms"; R22 and later:
# "final_int6_sliding_window val_loss:.. val_bpb:.. stride:64 eval_time:..ms"
SLIDING_LINES = (
    re.compile(r"^final_sliding_window_eval stride:(?P<stride>\d+) val_loss:(?P<loss>\S+) val_bpb:(?P<bpb>\S+) eval_time:(?P<ms>\d+)ms", re.M),
    re.compile(r"^final_\w+_sliding_window val_loss:(?P<loss>\S+) val_bpb:(?P<bpb>\S+) stride:(?P<stride>\d+) eval_time:(?P<ms>\d+)ms", re.M),
)


@dataclass(frozen=True)
class ScriptProfile:
    """How one script reads pgolf's configuration."""

    script: str  # what the script is, for messages
    signature: str = ""  # a string only that script's text contains
    renamed: dict[str, str] = field(default_factory=dict)  # pgolf's env name -> the script's

    def env_name(self, name: str) -> str:
        return self.renamed.get(name, name)


BASELINE_PROFILE = ScriptProfile("the challenge's train_gpt.py")
PROFILES = {
    "smeargate_orthoinit_muonwd": ScriptProfile(
        "records/track_10min_16mb/2026-03-19_smeargate_orthoinit_muonwd/train_gpt_v5.py (R15)",
        signature='"BIGRAM_HASH_BUCKETS"',
        renamed={"BIGRAM_VOCAB_SIZE": "BIGRAM_HASH_BUCKETS", "BIGRAM_DIM": "BIGRAM_HASH_DIM", "MUON_WD": "MUON_WEIGHT_DECAY"},
    ),
    # needs FlashAttention 3 (it imports flash_attn_interface); its TTT is off unless TTT_ENABLED=1
    "leakyrelu_ttt_parallel_muon": ScriptProfile(
        "records/track_10min_16mb/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon/train_gpt.py (R22)",
        signature='"TTT_BATCH_SEQS"',
    ),
}


def profile_for(cfg: Config) -> tuple[ScriptProfile, Config]:
    """The script profile of the run's preset and the configuration that script runs by default."""
    if cfg.preset in PROFILES:
        return PROFILES[cfg.preset], resolve_preset(cfg.preset)
    return BASELINE_PROFILE, resolve_preset("baseline")


def sliding_targets(n_targets: int, seq_len: int, stride: int) -> int:
    """Targets the record scripts' sliding evaluation scores: the last ``stride`` of every full window."""
    return max((n_targets - seq_len) // stride + 1, 1) * stride


def check_reference_possible(script: Path, device_type: str, world_size: int) -> str:
    """Refuse early when the reference cannot run here; return the script's text."""
    if device_type != "cuda":
        raise PgolfError(f"--reference needs a CUDA device: the reference train_gpt.py refuses to run without one (device here: {device_type})")
    if world_size != 1:
        raise PgolfError("--reference runs single-process: launch `pgolf bench` without torchrun")
    if not script.is_file():
        raise PgolfError(f"--reference {script}: file not found")
    return script.read_text(encoding="utf-8")


def check_reference_config(cfg: Config, script_text: str, mode: str) -> None:
    """Every field off the script's defaults must be one the script reads; and the settings it hard-codes must match."""
    profile, default = profile_for(cfg)
    if profile.signature and profile.signature not in script_text:
        raise PgolfError(f"preset {cfg.preset} compares with {profile.script}, and this script is not it (it lacks {profile.signature})")
    for section, f in iter_fields(cfg):
        value, env = getattr(getattr(cfg, section), f.name), f.metadata.get("env")
        if f"{section}.{f.name}" in NOT_COMPARED:
            continue
        name = profile.env_name(env) if env else None
        if value != getattr(getattr(default, section), f.name) and (not name or f'"{name}"' not in script_text):
            raise PgolfError(f"{section}.{f.name}={value!r}: the reference does not read {name or 'this field'}, so it cannot run the same configuration")
    if cfg.train.grad_accum_steps not in (0, 8):
        raise PgolfError(f"GRAD_ACCUM_STEPS={cfg.train.grad_accum_steps}: the reference always uses 8 // WORLD_SIZE = 8 on one GPU")
    if cfg.train.compile == "0":
        raise PgolfError("PGOLF_COMPILE=0: the reference always compiles; compare with compilation on")
    if mode == "eval" and cfg.eval.val_max_tokens:
        raise PgolfError(f"VAL_MAX_TOKENS={cfg.eval.val_max_tokens}: the reference always scores the full val split")


def link_data(cfg: Config, folder: Path) -> Path:
    """A DATA_PATH for the reference: links named as it expects, to exactly pgolf's train and val shards."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, pattern in (("train", cfg.data.train_glob()), ("val", cfg.data.val_glob())):
        for i, shard in enumerate(resolve_shards(pattern, split=split)):
            (folder / f"fineweb_{split}_{i:06d}.bin").symlink_to(Path(shard).resolve())
    return folder


def reference_env(cfg: Config, data_path: Path, iterations: int, warmup_steps: int) -> dict[str, str]:
    profile, _ = profile_for(cfg)
    env = {}
    for section, f in iter_fields(cfg):
        name, value = f.metadata.get("env"), getattr(getattr(cfg, section), f.name)
        if name:
            env[profile.env_name(name)] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env.update(
        DATA_PATH=str(data_path), TOKENIZER_PATH=str(Path(cfg.data.tokenizer_path).resolve()),
        ITERATIONS=str(iterations), WARMUP_STEPS=str(warmup_steps), VAL_LOSS_EVERY="0",
        TRAIN_LOG_EVERY=str(max(iterations, 1)), MAX_WALLCLOCK_SECONDS="0", RUN_ID="pgolf-bench-reference",
    )
    return env


def parse_reference_log(text: str, mode: str, sliding: bool = False) -> dict:
    """The reference's own numbers from its stdout: last step line, peak memory, round-trip (and sliding) eval time."""
    peak, evaluation = PEAK_LINE.search(text), EVAL_LINE.search(text)
    if peak is None or evaluation is None:
        raise PgolfError("reference output lacks its 'peak memory allocated' or 'final_..._roundtrip' line: did it finish?")
    result = {"peak_memory_mib": int(peak.group(1)), "peak_memory_reserved_mib": int(peak.group(2)),
              "eval_time_ms": float(evaluation.group(1))}
    if sliding:
        found = next((m for m in (line.search(text) for line in SLIDING_LINES) if m), None)
        if found is None:
            raise PgolfError("reference output has no 'final_..._sliding_window ... stride:...' line: does the script read EVAL_STRIDE?")
        result.update(sliding_stride=int(found["stride"]), sliding_val_loss=float(found["loss"]),
                      sliding_val_bpb=float(found["bpb"]), sliding_eval_time_ms=float(found["ms"]))
    if mode == "train":
        steps = STEP_LINE.findall(text)
        if not steps:
            raise PgolfError("reference output has no 'step:N/M train_loss:... step_avg:...ms' line")
        step, _, train_ms, step_avg = steps[-1]
        result.update(steps=int(step), total_ms=float(train_ms), step_ms=float(step_avg))
    return result


def run_reference(script: Path, cfg: Config, mode: str, steps: int, warmup_steps: int) -> dict:
    """Run the reference once (train: ``steps`` timed steps; eval: no training) and return its numbers."""
    with tempfile.TemporaryDirectory(prefix="pgolf-reference-") as scratch:
        scratch_path = Path(scratch)
        data = link_data(cfg, scratch_path / "data")
        env = {**os.environ, **reference_env(cfg, data, steps if mode == "train" else 0, warmup_steps)}
        proc = subprocess.run([sys.executable, str(script.resolve())], cwd=scratch_path, env=env,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PgolfError(f"reference {script} exited with {proc.returncode}: {last}")
    return parse_reference_log(proc.stdout, mode, sliding=mode == "eval" and cfg.eval.eval_stride > 0)
