"""`pgolf check flip` and `pgolf check normalization` end to end on a small checkpoint."""

from __future__ import annotations

import json

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
    assert code == 0 and report["ok"] and len(report["reports"][0]["flips"]) == 2
    code, out, _ = run_pgolf(["check", "normalization", *common, "--samples", "16"])
    assert code == 0 and json.loads(out)["max_sum_error"] < 1e-6
