"""``pgolf train`` and ``pgolf demo`` are never silent in their long phases: compile warm-up, the
final validation, the export, the round trip and the configured evaluation phases each show on
stderr (bars counting every step or scored target), while stdout keeps its log and ``--json`` its
last line."""

from __future__ import annotations

import json

import pytest

from pgolf import progress
from tests.eval.test_eval_progress import Counted
from tests.train.test_training import tiny_config_overrides

# The phases of a tiny run with a warm-up and a sliding phase: label -> the targets its bar counts.
COUNTED = {"train: validation": 2048, "train: round trip of the artifact": 2048, "train: sliding windows": 2048}
UNCOUNTED = ("train: compile warm-up", "train: export")


def check_phases_shown(err: str, counted: Counted) -> None:
    lines = err.splitlines()
    for label, total in COUNTED.items():
        assert f"{label}, {total:,} tokens ..." in lines, (label, err)
        assert counted.counted[label] == counted.totals[label] == total, label
    for label in UNCOUNTED:
        assert f"{label} ..." in lines, (label, err)
    for label in (*COUNTED, *UNCOUNTED):
        assert sum(line.startswith(f"{label}: done in ") for line in lines) == 1, (label, err)


def check_stdout(out: str) -> dict:
    assert not any(line.startswith("train: ") for line in out.splitlines())  # progress stays off stdout
    return json.loads(out.strip().splitlines()[-1])


def test_train_shows_its_long_phases_and_keeps_json_last(shared_data, run_pgolf, monkeypatch, tmp_path):
    counted = Counted(progress.start)
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setattr(progress, "start", counted.start)
    sets = tiny_config_overrides(shared_data, 2, "VAL_MAX_TOKENS=2048", "WARMUP_STEPS=2", "EVAL_STRIDE=64", "RUN_ID=p")
    code, out, err = run_pgolf(["train", "--preset", "tiny_cpu", "--runs-dir", str(tmp_path), "--json",
                                *(f"--set={s}" for s in sets)])
    assert code == 0, err
    results = check_stdout(out)
    assert results["final_phase"] == "sliding" and results["post_quant"]["tokens"] == 2048
    check_phases_shown(err, counted)


@pytest.mark.slow
def test_demo_shows_its_data_build_and_its_run(shared_data, run_pgolf, monkeypatch, tmp_path, val_prefix_shard,
                                               train_sample_dir, sp1024_model):
    """The built-in corpus build is replaced by a folder of real shards (building it takes minutes)."""
    import pgolf.demo

    def real_shards(work, vocab_size):
        data = tmp_path / "data"
        data.mkdir()
        (data / "fineweb_train_000000.bin").symlink_to(train_sample_dir / "fineweb_train_000000.bin")
        (data / "fineweb_val_000000.bin").symlink_to(val_prefix_shard)
        return data, sp1024_model

    counted = Counted(progress.start)
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setattr(progress, "start", counted.start)
    monkeypatch.setattr(pgolf.demo, "build_demo_data", real_shards)
    code, out, err = run_pgolf(["demo", "--seconds", "1", "--runs-dir", str(tmp_path / "runs"), "--json",
                                *(f"--set={s}" for s in ("VOCAB_SIZE=1024", "VAL_MAX_TOKENS=2048", "TRAIN_SEQ_LEN=128",
                                                          "TRAIN_BATCH_TOKENS=2048", "VAL_BATCH_SIZE=2048",
                                                          "WARMUP_STEPS=2", "EVAL_STRIDE=64"))])
    assert code == 0, err
    check_stdout(out)
    check_phases_shown(err, counted)
    assert "demo: corpus, tokenizer and shards ..." in err.splitlines()
