"""`pgolf check flip` and `pgolf check normalization` end to end on a small checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pgolf.model.gpt import GPT
from pgolf.presets import resolve_preset


def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = GPT(resolve_preset("tiny_cpu").model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "checkpoint.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"pgolf_config": resolve_preset("tiny_cpu").to_json()})
    return path


def test_flip_and_normalization_pass(run_pgolf, tmp_path, sp1024_model, val_prefix_shard):
    common = ["--checkpoint", str(checkpoint(tmp_path)), "--tokenizer", str(sp1024_model), "--val", str(val_prefix_shard),
              "--max-tokens", "512", "--json"]
    code, out, _ = run_pgolf(["check", "flip", *common, "--mode", "sliding", "--flips", "2", "--batch-tokens", "512"])
    report = json.loads(out)
    assert code == 0 and report["ok"] and [f["kind"] for f in report["reports"][0]["flips"]] == ["substitute", "insert_bos"]
    code, out, _ = run_pgolf(["check", "normalization", *common, "--samples", "16"])
    assert code == 0 and json.loads(out)["max_sum_error"] < 1e-6


@pytest.mark.slow
def test_flip_all_modes_perturbs_document_structure_and_catches_a_planted_lora_leak(
        run_pgolf, tmp_path, sp1024_model, val_prefix_shard, monkeypatch):
    from pgolf.eval.ttt.lora import BatchedLoRA

    # 640 tokens: documents at 0 and 523, so a BOS can be deleted, inserted and overwritten in the
    # second half (every kind on every mode: tests/eval/test_flip.py)
    kinds = ["insert_bos", "delete_bos", "rewrite_tail"]
    common = ["--checkpoint", str(checkpoint(tmp_path)), "--tokenizer", str(sp1024_model), "--val", str(val_prefix_shard),
              "--max-tokens", "640", "--json", "--batch-tokens", "1024", "--set", "TTT_CHUNK_SIZE=128",
              "--set", "TTT_EVAL_SEQ_LEN=128", "--set", "TTT_CHUNK_TOKENS=256", "--set", "TTT_EPOCHS=1",
              "--set", "PHASED_TTT_PREFIX_DOCS=1", "--set", "GLOBAL_TTT_CHUNK_TOKENS=256", "--kinds", ",".join(kinds)]
    code, out, _ = run_pgolf(["check", "flip", *common, "--mode", "all", "--flips", "3"])
    report = json.loads(out)
    assert code == 0 and report["ok"], report
    assert [r["mode"] for r in report["reports"]] == ["standard", "sliding", "sgd", "lora", "phased"]
    assert all([f["kind"] for f in r["flips"]] == kinds for r in report["reports"])

    original = BatchedLoRA.__init__  # planted: a batch's adapters start from its latest document's
    monkeypatch.setattr(BatchedLoRA, "__init__", lambda self, model, starts, *rest: original(self, model, [max(starts)] * len(starts), *rest))
    code, out, _ = run_pgolf(["check", "flip", *common, "--mode", "lora", "--flips", "3"])
    assert code == 1 and not json.loads(out)["ok"]


def test_flip_rejects_unknown_kinds(run_pgolf, tmp_path, sp1024_model, val_prefix_shard):
    code, _, err = run_pgolf(["check", "flip", "--checkpoint", str(checkpoint(tmp_path)), "--tokenizer", str(sp1024_model),
                              "--val", str(val_prefix_shard), "--kinds", "substitute,swap"])
    assert code == 2 and "--kinds" in err
