"""Every preset and an every-option model: parameter counts, causality, and 20 steps of real training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from techniques_helpers import ALL_ON, BOS, perturbed, tiny_cfg

from pgolf.data.shards import read_shard
from pgolf.model.gpt import GPT, count_parameters
from pgolf.optim.groups import build_optimizers
from pgolf.presets import PRESETS, resolve_preset


def parameter_count(model_cfg) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init work
        return count_parameters(GPT(model_cfg))


def test_r15_preset_has_the_records_parameter_count():
    assert parameter_count(resolve_preset("smeargate_orthoinit_muonwd").model) == 22_368_840


@pytest.mark.parametrize("name, logged", [
    ("leakyrelu_ttt_parallel_muon", 26_928_220),  # R22 train_seed*.log model_params
    ("sp8192_recur_parres_ttt", 35_944_536),  # R35 train_seed*.log model_params
    ("sp8192_lqer_sparsegate_bossmear", 35_945_671),  # R44 train_seed*.log model_params
])
def test_record_presets_have_the_records_parameter_counts(name, logged):
    assert parameter_count(resolve_preset(name).model) == logged


def test_pr1090_logged_run_is_the_preset_plus_a_4096x128_bigram():
    """PR #1090's shipped code has no BigramHash; its train.log (27,092,057) came from a run with one."""
    m = resolve_preset("xsa_swiglu_lora_ttt_1xh100").model
    assert parameter_count(m) == 26_502_232
    m.bigram_vocab_size, m.bigram_dim = 4096, 128
    assert parameter_count(m) == 27_092_057


def shrink(model_cfg) -> None:
    """Reduced width and depth, keeping every switch of the preset."""
    m = model_cfg
    m.model_dim, m.num_heads, m.num_kv_heads = 64, 4, 2
    m.num_layers = max(2, min(m.num_layers, 4))
    m.mlp_hidden = min(m.mlp_hidden, 128)
    m.loop_start, m.loop_end = min(m.loop_start, m.num_layers - 1), min(m.loop_end, m.num_layers - 1)
    m.parallel_start_layer = min(m.parallel_start_layer, m.num_layers - 1)
    m.parallel_residual_start = min(m.parallel_residual_start, m.num_layers - 1)
    m.embed_dim = min(m.embed_dim, 32)
    m.rope_dims = min(m.rope_dims, 8)
    m.bigram_vocab_size = min(m.bigram_vocab_size, 512)
    m.bigram_dim = min(m.bigram_dim, 32)
    if m.ve_layers:
        m.ve_layers = str(m.num_layers - 1)


def causal_model(model_cfg) -> GPT:
    torch.manual_seed(0)
    return perturbed(GPT(model_cfg)).eval()  # recurrence, if any, is on when built


def shrunk_configs():
    cases = {}
    for name in PRESETS:
        m = resolve_preset(name).model
        shrink(m)
        cases[name] = m
    cases["every_option"] = tiny_cfg(**ALL_ON)
    return cases


@pytest.mark.parametrize("name", sorted(shrunk_configs()))
def test_changing_a_later_token_never_changes_earlier_outputs(name):
    model_cfg = shrunk_configs()[name]
    model = causal_model(model_cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(2, model_cfg.vocab_size, (2, 40), generator=gen)
    x[:, [0, 17]] = BOS  # documents, for the options that see them
    base = model.logits(x)
    for t in (0, 9, 16, 30):
        x2 = x.clone()
        x2[:, t + 1] = (x2[:, t + 1] + 7 - 2) % (model_cfg.vocab_size - 2) + 2  # never a BOS
        out = model.logits(x2)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), (name, t)
        assert not torch.equal(out[:, t + 1 :], base[:, t + 1 :]), (name, t)


def train_steps(model_cfg, optim_cfg, tokens: np.ndarray, steps: int = 20, seqs: int = 8, seqlen: int = 64):
    """A direct mini loop (the real optimizers, no schedule); recurrence switches on half-way."""
    torch.manual_seed(0)
    model = GPT(model_cfg)
    model.set_recurrence(False)
    opts = build_optimizers(model, optim_cfg, model_cfg.tie_embeddings)
    losses = []
    for step in range(steps):
        if model_cfg.num_loops and step == steps // 2:
            model.set_recurrence(True)
        start = step * seqs * seqlen
        chunk = torch.from_numpy(tokens[start : start + seqs * seqlen + 1].astype(np.int64))
        x, y = chunk[:-1].view(seqs, seqlen), chunk[1:].view(seqs, seqlen)
        loss = model(x, y)
        opts.zero_grad()
        loss.backward()
        opts.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def train_tokens(shared_data) -> np.ndarray:
    shard = sorted((shared_data / "datasets" / "fineweb10B_sp1024_trainsample").glob("fineweb_train_*.bin"))[0]
    return read_shard(shard)[: 20 * 8 * 64 + 1]


@pytest.mark.parametrize("name", sorted(shrunk_configs()))
def test_every_preset_and_every_option_learn_in_20_steps(name, train_tokens):
    model_cfg = shrunk_configs()[name]
    model_cfg.vocab_size = 1024
    optim_cfg = resolve_preset(name).optim if name in PRESETS else resolve_preset("tiny_cpu").optim
    losses = train_steps(model_cfg, optim_cfg, train_tokens)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses


def test_model_info_counts_every_option(run_pgolf):
    sets = [f"--set=model.{k}={v}" for k, v in ALL_ON.items()]
    code, out, _ = run_pgolf(["model", "info", "--preset", "tiny_cpu", "--json", *sets])
    assert code == 0
    info = json.loads(out)
    cfg = tiny_cfg(**ALL_ON)
    cfg.vocab_size = 1024
    assert info["params"] == count_parameters(GPT(cfg))
    for group in ("bigram", "smear", "ve_shared", "ve_layer_scales", "skip_gates", "parallel_post_lambdas"):
        assert info["by_group"][group] > 0, group
    assert info["model_changes"]["xsa_last_n"] == 4 and "num_layers" in info["model_changes"]


def test_model_info_reports_a_record_presets_count(run_pgolf):
    code, out, _ = run_pgolf(["model", "info", "--preset", "sp8192_lqer_sparsegate_bossmear", "--json"])
    assert code == 0
    info = json.loads(out)
    assert info["params"] == 35_945_671 and info["vocab_size"] == 8192
    assert info["model_changes"]["parallel_start_layer"] == 8 and info["by_group"]["smear"] == 13
