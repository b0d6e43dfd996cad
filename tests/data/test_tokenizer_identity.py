"""Shards whose manifest records another tokenizer are refused by every verb that reads them with one:
``data verify``, ``data audit``, ``eval``, ``train`` (train and val shards) and ``doctor``; in one line
naming both files. Their own tokenizer, and shards without a manifest, keep working."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from pgolf.data.prepare import prepare

VAL_DOCS = 10


@pytest.fixture(scope="module")
def own_shards(shared_data, tmp_path_factory) -> Path:
    """30 real docs through ``pgolf data prepare`` with a 1024-piece tokenizer trained on them: ids
    that fit the official tokenizer's vocab, so only the manifest can tell the two apart."""
    root = tmp_path_factory.mktemp("own")
    with (shared_data / "docs" / "fineweb_docs_selected_sample200.jsonl").open() as f:
        docs = [json.loads(line)["text"] for line in itertools.islice(f, 60)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    prepare(root / "docs.jsonl", root / "data", vocab_size=1024, val_docs=VAL_DOCS, progress=False)
    return root / "data"


def assert_refused_in_one_line(code: int, err: str, tokenizer: Path, shards: Path) -> None:
    assert code == 2 and err.count("\n") == 1, err
    assert str(tokenizer) in err and str(shards.resolve() / "manifest.json") in err and "sha256" in err


def test_verify(own_shards, sp1024_model, run_pgolf):
    code, _, err = run_pgolf(["data", "verify", str(own_shards), "--tokenizer", str(sp1024_model)])
    assert_refused_in_one_line(code, err, sp1024_model, own_shards)
    code, out, _ = run_pgolf(["data", "verify", str(own_shards), "--tokenizer", str(own_shards / "tokenizer.model")])
    assert code == 0 and out.splitlines()[-1].startswith("OK")


def test_audit(own_shards, sp1024_model, run_pgolf):
    code, _, err = run_pgolf(["data", "audit", "--tokenizer", str(sp1024_model), "--val", str(own_shards)])
    assert_refused_in_one_line(code, err, sp1024_model, own_shards)
    code, out, _ = run_pgolf(["data", "audit", "--tokenizer", str(own_shards / "tokenizer.model"), "--val", str(own_shards)])
    assert code == 0 and "OK" in out


def test_eval(own_shards, sp1024_model, tmp_path, run_pgolf):
    from safetensors.torch import save_file

    from pgolf.model.gpt import build_model
    from pgolf.presets import build_config

    cfg = build_config("tiny_cpu", environ={})
    weights = tmp_path / "checkpoint.safetensors"
    save_file(build_model(cfg.model, "cpu").state_dict(), str(weights), metadata={"pgolf_config": json.dumps(cfg.to_dict())})
    args = ["eval", "--checkpoint", str(weights), "--val", str(own_shards), "--seq-len", "64", "--max-tokens", "1024",
            "--device", "cpu"]
    code, _, err = run_pgolf([*args, "--tokenizer", str(sp1024_model)])
    assert_refused_in_one_line(code, err, sp1024_model, own_shards)
    code, out, _ = run_pgolf([*args, "--tokenizer", str(own_shards / "tokenizer.model"), "--json"])
    assert code == 0 and json.loads(out.splitlines()[-1])["tokens"] > 0


@pytest.mark.parametrize("mismatched", ["val", "train"])
def test_train(own_shards, sp1024_model, val_prefix_shard, train_sample_dir, tmp_path, run_pgolf, mismatched):
    data = {"val": [f"DATA_PATH={train_sample_dir}", f"VAL_FILES={own_shards}/fineweb_val_*.bin"],
            "train": [f"DATA_PATH={own_shards}", f"VAL_FILES={val_prefix_shard}"]}[mismatched]
    sets = [f"--set={s}" for s in (*data, f"TOKENIZER_PATH={sp1024_model}", "ITERATIONS=1", "VAL_MAX_TOKENS=1024")]
    code, _, err = run_pgolf(["train", "--preset", "tiny_cpu", *sets, "--runs-dir", str(tmp_path / "runs")])
    assert_refused_in_one_line(code, err, sp1024_model, own_shards)
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_doctor(own_shards, sp1024_model, run_pgolf):
    sets = [f"--set=DATA_PATH={own_shards}", f"--set=TOKENIZER_PATH={sp1024_model}"]
    code, out, _ = run_pgolf(["doctor", *sets, "--json"])
    found = {f["check"]: f for f in json.loads(out)}
    assert code == 1
    for split in ("train shards", "val shards"):
        assert found[split]["status"] == "fail" and str(sp1024_model) in found[split]["detail"]
        assert "manifest.json" in found[split]["detail"]
    code, out, _ = run_pgolf(["doctor", f"--set=DATA_PATH={own_shards}",
                              f"--set=TOKENIZER_PATH={own_shards / 'tokenizer.model'}", "--json"])
    found = {f["check"]: f for f in json.loads(out)}
    assert found["train shards"]["status"] == found["val shards"]["status"] == "ok"


def test_official_shards_without_a_manifest_keep_working(sp1024_model, val_prefix_shard, train_sample_dir, run_pgolf):
    # the train sample's manifest.json is another exporter's: it records no checkable tokenizer
    assert (train_sample_dir / "manifest.json").is_file()
    code, _, _ = run_pgolf(["data", "verify", str(train_sample_dir), str(val_prefix_shard), "--tokenizer", str(sp1024_model)])
    assert code == 0
