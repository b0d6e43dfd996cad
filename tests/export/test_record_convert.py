"""``pgolf eval`` and ``pgolf convert`` on a record's own ``final_model.pt`` (R22: parameter banks,
its own key names, a ParameterList, the SmearGate turned round), built by the record's own script."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

R22 = "leakyrelu_ttt_parallel_muon"
R22_SCRIPT = "R22_leakyrelu_ttt_parallel_muon/train_gpt.py"
WINDOW = 2048  # R22's sequence length: one window


def r22_model(mod):
    from pgolf.presets import build_config

    m = build_config(R22, environ={}).model
    model = mod.GPT(vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                    num_kv_heads=m.num_kv_heads, mlp_mult=m.mlp_mult, tie_embeddings=True,
                    tied_embed_init_std=m.tied_embed_init_std, logit_softcap=m.logit_softcap, rope_base=m.rope_base,
                    qk_gain_init=m.qk_gain_init, bigram_vocab_size=m.bigram_vocab_size, bigram_dim=m.bigram_dim,
                    xsa_last_n=m.xsa_last_n, rope_dims=m.rope_dims, ln_scale=m.ln_scale, ve_enabled=True,
                    ve_dim=m.ve_dim, ve_layers=m.ve_layers).float().eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-trivial weights: zero-initialised projections and the smear gate too
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            p.copy_(noise / math.sqrt(p.shape[-1]) if p.ndim >= 2 and min(p.shape[-2:]) >= 16 else p + 0.5 * noise)
    return model


@pytest.fixture(scope="module")
def r22_checkpoint(oracle, tmp_path_factory):
    """(record module, record model, its final_model.pt as its main() saves it)."""
    mod = oracle(R22_SCRIPT)
    model = r22_model(mod)
    path = tmp_path_factory.mktemp("r22") / "final_model.pt"
    torch.save(model.state_dict(), path)
    return mod, model, path


def test_pgolf_eval_scores_the_records_final_model_pt_with_the_records_loss(
        r22_checkpoint, run_pgolf, sp1024_model, val_prefix_shard):
    from pgolf.data.shards import load_tokens

    _, model, path = r22_checkpoint
    code, out, err = run_pgolf(["eval", "--checkpoint", str(path), "--preset", R22, "--tokenizer", str(sp1024_model),
                                "--val", str(val_prefix_shard), "--max-tokens", str(WINDOW), "--device", "cpu",
                                "--set", "EVAL_STRIDE=0", "--set", "PGOLF_TTT=", "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    tokens = torch.from_numpy(load_tokens(val_prefix_shard, "val", 1024)[: WINDOW + 1].astype(np.int64))
    with torch.no_grad():
        record_loss = model(tokens[None, :-1], tokens[None, 1:]).item()  # the record's own loss function
    assert result["tokens"] == WINDOW
    assert abs(result["val_loss"] - record_loss) < 1e-5


def test_pgolf_convert_round_trips_the_records_file_bit_for_bit(r22_checkpoint, run_pgolf, tmp_path):
    _, model, path = r22_checkpoint
    ours = tmp_path / "checkpoint.safetensors"
    code, out, err = run_pgolf(["convert", str(path), "--preset", R22, "--to", "pgolf", "--out", str(ours)])
    assert code == 0, err
    back = tmp_path / "final_model.pt"
    code, out, err = run_pgolf(["convert", str(ours), "--to", "record", "--out", str(back)])  # the config is inside
    assert code == 0, err
    assert "R22 (PR #549)'s layout" in out
    original, again = torch.load(path, weights_only=True), torch.load(back, weights_only=True)
    assert sorted(again) == sorted(original)
    assert all(torch.equal(again[k], original[k]) for k in original)
    model.load_state_dict(again, strict=True)


def test_convert_refuses_a_preset_without_a_record(r22_checkpoint, run_pgolf, tmp_path):
    _, _, path = r22_checkpoint
    out = tmp_path / "x.pt"
    code, _, err = run_pgolf(["convert", str(path), "--preset", "tiny_cpu", "--to", "record", "--out", str(out)])
    assert code == 2 and "reproduces no record" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_records_file_under_another_record_preset_is_named_and_nothing_is_written(r22_checkpoint, run_pgolf, tmp_path):
    _, _, path = r22_checkpoint
    out = tmp_path / "x.safetensors"
    code, _, err = run_pgolf(["convert", str(path), "--preset", "sp8192_lqer_sparsegate_bossmear", "--to", "pgolf",
                              "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nor R44 (PR #1855)'s" in err
    assert list(tmp_path.iterdir()) == []
