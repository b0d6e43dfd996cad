"""The benchmark's JSON: both sides' numbers with the commit, device, versions and configuration.

Written atomically to ``benchmarks/results/<date>_<device>_<preset>_<mode>.json`` (UTC date; mode
``train``, ``eval`` or ``eval-sliding<stride>``; one file per day, device, preset and mode, so the
latest measurement of a day replaces the earlier one).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pgolf.bench.flops import mfu, peak_flops
from pgolf.bench.reference import sliding_targets
from pgolf.bench.run import Measurement
from pgolf.config import Config
from pgolf.runtime import git_commit, source_hash, versions
from pgolf.files import make_folder, write_json_atomic

FLOPS_FORMULA = (
    "train: 3 * (2 * N_mm + 2 * num_layers * model_dim * (seq_len + 1)) per token; eval: one third of that; "
    "N_mm = weights in matrix multiplies incl. the output head (see pgolf.bench.flops)"
)


def device_slug(device: str, world_size: int) -> str:
    name = "cpu" if device.startswith("cpu") else re.sub(r"[^a-z0-9]+", "-", device.lower().replace("nvidia", "")).strip("-")
    return f"{world_size}x{name}" if world_size > 1 else name


def result_path(out_dir: Path, preset: str, ours: Measurement, date: str | None = None) -> Path:
    date = date or time.strftime("%Y-%m-%d", time.gmtime())
    preset_slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(preset).stem if preset.endswith(".toml") else preset)
    mode = f"{ours.mode}-sliding{ours.details['stride']}" if "stride" in ours.details else ours.mode
    return Path(out_dir) / f"{date}_{device_slug(ours.device, ours.world_size)}_{preset_slug}_{mode}.json"


def reference_numbers(raw: dict, ours: Measurement, cfg: Config) -> dict:
    """The reference's log numbers plus the same derived rates pgolf's side gets."""
    peak = peak_flops(ours.device)
    if ours.mode == "train":
        total_ms, tokens = raw["total_ms"], cfg.train.train_batch_tokens * raw["steps"]
    elif "sliding_eval_time_ms" in raw:  # the script's sliding evaluation: its own count of scored targets
        total_ms, tokens = raw["sliding_eval_time_ms"], sliding_targets(ours.tokens, cfg.eval_seq_len, cfg.eval.eval_stride)
    else:
        total_ms, tokens = raw["eval_time_ms"], ours.tokens
    rate = tokens / (total_ms / 1000.0)
    derived = {"tokens": tokens, "tokens_per_s": rate, "mfu": mfu(ours.flops_per_token, rate, 1, peak)}
    if ours.mode == "eval" and "sliding_eval_time_ms" not in raw:
        derived["eval_batch_tokens"] = cfg.eval.val_batch_size // 8  # it divides by grad_accum_steps = 8
    return {**raw, **derived}


def build_report(cfg: Config, ours: Measurement, reference: dict | None, reference_script: str | None) -> dict:
    mine = ours.as_dict()
    report = {
        "what": f"pgolf bench {ours.mode}: pgolf's own {ours.mode} step" + (" vs the reference train_gpt.py" if reference else ""),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "preset": cfg.preset,
        "git_commit": git_commit(),
        "source_sha256": source_hash(),
        "device": ours.device,
        "world_size": ours.world_size,
        "versions": versions(),
        "flops_formula": FLOPS_FORMULA,
        "config": cfg.to_dict(),
        "pgolf": mine,
        "reference": None,
    }
    if reference is not None:
        report["reference"] = {"script": reference_script, **reference}
        report["speedup_vs_reference"] = mine["tokens_per_s"] / reference["tokens_per_s"]  # > 1: pgolf is faster
    return report


def write_report(report: dict, path: Path) -> Path:
    make_folder(path.parent)
    write_json_atomic(path, report)
    return path
