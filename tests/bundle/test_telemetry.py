"""``pgolf.runtime.TELEMETRY``: what a bundle folds off only describes a run.

The package run with it False (what a bundle ships) trains and scores the same numbers, and its
train.log still holds every line and fact that ``pgolf submit`` / ``pgolf check record`` read
(:func:`pgolf.check.track.facts_from_log`: header facts, resolved config, size line) and the
score lines of the records (val_loss/val_bpb per validation, final_roundtrip, stopping lines);
a bundle ships none of the telemetry code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pgolf.bundle.entry
import pgolf.train.loop
from pgolf.check.track import facts_from_run
from pgolf.presets import build_config
from pgolf.train.loop import train

TIMES = re.compile(r"(train_time|step_avg|eval_time):[\d.]+ms|tok/s:[\d,]+")
# results.json fields that a clock or the telemetry itself decides
UNCOMPARED = {"run_id", "train_time_s", "step_avg_ms", "eval_time_s", "tokens_per_s", "phases"}
# what TELEMETRY adds to results.json: read by the package's own tools from the package's runs only
TELEMETRY_RESULTS = {"git_commit", "code_kind", "run_dir", "stopped_early", "gptq_hessian_time_s", "peak_memory_mib"}


def _run(shared_data: Path, runs: Path, run_id: str = "run") -> tuple[dict, list[str], list[float]]:
    overrides = [
        f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        "ITERATIONS=4", "VAL_MAX_TOKENS=2048", "TRAIN_LOG_EVERY=1", "VAL_LOSS_EVERY=2", f"RUN_ID={run_id}",
    ]
    results = train(build_config("tiny_cpu", overrides, environ={}), runs_dir=runs, echo=False)
    lines = (runs / run_id / "train.log").read_text().splitlines()
    rows = [json.loads(line) for line in (runs / run_id / "metrics.jsonl").read_text().splitlines()]
    return results, lines, [r["train_loss"] for r in rows if r["event"] == "train"]


def _scored_lines(lines: list[str]) -> list[str]:
    """The log's score, step and size lines, clock readings blanked."""
    keep = ("step:", "final_roundtrip", "stopping_early", "artifact ")
    return [TIMES.sub(r"\1", line) for line in lines if line.startswith(keep)]


def test_telemetry_off_changes_no_number_and_no_line_that_submit_reads(shared_data, tmp_path, monkeypatch):
    # one run id in two folders: the artifact holds the config, run id included, so its bytes are comparable
    on_runs, off_runs = tmp_path / "on", tmp_path / "off"
    on, on_log, on_losses = _run(shared_data, on_runs)
    monkeypatch.setattr(pgolf.train.loop, "TELEMETRY", False)
    off, off_log, off_losses = _run(shared_data, off_runs)
    assert on_losses == off_losses and len(off_losses) == 4
    assert {k: v for k, v in on.items() if k not in UNCOMPARED | TELEMETRY_RESULTS} == {k: v for k, v in off.items() if k not in UNCOMPARED}
    assert TELEMETRY_RESULTS <= set(on) and not TELEMETRY_RESULTS & set(off)
    assert _scored_lines(on_log) == _scored_lines(off_log)
    assert any(line.startswith("final_roundtrip_exact val_loss:") for line in off_log)
    assert sum(line.startswith("step:") and "val_bpb:" in line for line in off_log) == 3  # steps 0, 2, 4
    facts_on, facts_off = facts_from_run(on_runs / "run", "run"), facts_from_run(off_runs / "run", "run")
    for name in ("device", "source_sha256", "config", "code_source", "cap_s", "val_max_tokens", "bundle_config"):
        assert getattr(facts_off, name) == getattr(facts_on, name), name
    assert facts_off.device and facts_off.source_sha256 and facts_off.code_source
    # what it does leave out: the commit (a bundle has no checkout) and the header's copy of the versions
    assert "versions" in off
    assert any(line.startswith("git_commit:") for line in on_log) and not any(line.startswith(("git_commit:", "versions:")) for line in off_log)


def test_a_bundle_ships_no_telemetry_code(stock_bundle):
    folder, _ = stock_bundle("baseline")
    source = (folder / "train_gpt_readable.py").read_text()
    for name in ("TELEMETRY", "tqdm", "git_commit", "final_size", "set_postfix", "json.dumps(results"):
        assert name not in source, name
    # what the package's run has under the switch is there in the package
    loop = Path(pgolf.train.loop.__file__).read_text()
    assert "tqdm" in loop and "git_commit()" in loop and "final_size(s, size)" in loop
    assert "TELEMETRY and" in Path(pgolf.bundle.entry.__file__).read_text()


def test_a_bundle_ships_no_code_that_finds_the_packages_files(stock_bundle):
    # pgolf.runtime.BUNDLED: a bundle counts and hashes the file it names itself as, never the package's
    import pgolf.export.artifact
    import pgolf.runtime

    folder, _ = stock_bundle("baseline")
    source = (folder / "train_gpt_readable.py").read_text()
    for name in ("BUNDLED", "def code_files", "rglob", "sys.modules.items()"):
        assert name not in source, name
    package = Path(pgolf.export.artifact.__file__).read_text() + Path(pgolf.runtime.__file__).read_text()
    assert "def code_files" in package and "rglob" in package and "or BUNDLED" in package
