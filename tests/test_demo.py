"""``pgolf demo --data``: real shards whose val split lives elsewhere (as the shared train sample's does)."""

from __future__ import annotations

import json

import pytest


def test_data_without_val_shards_says_to_pass_val(run_pgolf, train_sample_dir, sp1024_model, tmp_path):
    code, _, err = run_pgolf(["demo", "--data", str(train_sample_dir), "--tokenizer", str(sp1024_model),
                              "--runs-dir", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and "no fineweb_val_*.bin" in err and "pass --val" in err, err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


@pytest.mark.slow
def test_val_shards_from_another_folder(run_pgolf, train_sample_dir, val_prefix_shard, sp1024_model, tmp_path):
    code, out, err = run_pgolf(["demo", "--data", str(train_sample_dir), "--val", str(val_prefix_shard),
                                "--tokenizer", str(sp1024_model), "--seconds", "1", "--runs-dir", str(tmp_path),
                                "--set", "VAL_MAX_TOKENS=4096", "--set", "TRAIN_SEQ_LEN=128", "--set", "TRAIN_BATCH_TOKENS=2048",
                                "--set", "VAL_BATCH_SIZE=2048", "--json"])
    assert code == 0, err
    results = json.loads(out.splitlines()[-1])
    assert results["post_quant"]["tokens"] == 4096
    config = json.loads((tmp_path / results["run_id"] / "config.json").read_text())
    assert config["data"]["val_files"] == str(val_prefix_shard)
    assert results["quantized_tensors"] > 0  # demo_cpu's policy quantizes its matrices: the round trip means something
