"""Every preset and an every-option model: parameter counts, causality, and 20 steps of real training."""

from __future__ import annotations

import json

import pytest
import torch
from techniques_helpers import ALL_ON, BOS, perturbed, tiny_cfg

from pgolf.model.gpt import GPT, count_parameters
from pgolf.presets import PRESETS, build_config, resolve_preset
from pgolf.train.loop import train


def test_r15_preset_has_the_records_parameter_count():
    assert count_parameters(GPT(resolve_preset("smeargate_orthoinit_muonwd").model)) == 22_368_840


def shrink(model_cfg) -> None:
    """Reduced width and depth, keeping every switch of the preset."""
    m = model_cfg
    m.model_dim, m.num_heads, m.num_kv_heads = 64, 4, 2
    m.num_layers = max(2, min(m.num_layers, 4))
    m.mlp_hidden = min(m.mlp_hidden, 128)
    m.loop_start, m.loop_end = min(m.loop_start, m.num_layers - 1), min(m.loop_end, m.num_layers - 1)
    m.parallel_start_layer = min(m.parallel_start_layer, m.num_layers - 1)
    m.rope_dims = min(m.rope_dims, 8)
    m.bigram_vocab_size = min(m.bigram_vocab_size, 512)
    m.bigram_dim = min(m.bigram_dim, 32)
    if m.ve_layers:
        m.ve_layers = str(m.num_layers - 1)


def causal_model(model_cfg) -> GPT:
    torch.manual_seed(0)
    model = perturbed(GPT(model_cfg)).eval()
    if model_cfg.num_loops:
        model.set_recurrence(True)
    return model


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


def training_overrides(shared_data, run_id: str, model_cfg) -> list[str]:
    m = model_cfg
    sizes = {"MODEL_DIM": m.model_dim, "NUM_HEADS": m.num_heads, "NUM_KV_HEADS": m.num_kv_heads,
             "NUM_LAYERS": m.num_layers, "MLP_HIDDEN": m.mlp_hidden, "LOOP_START": m.loop_start,
             "LOOP_END": m.loop_end, "PARALLEL_START_LAYER": m.parallel_start_layer, "ROPE_DIMS": m.rope_dims,
             "BIGRAM_VOCAB_SIZE": m.bigram_vocab_size, "BIGRAM_DIM": m.bigram_dim, "VE_LAYERS": m.ve_layers}
    return [
        f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        "ITERATIONS=20", "WARMDOWN_ITERS=5", "WARMUP_STEPS=0", "MAX_WALLCLOCK_SECONDS=0", "VAL_MAX_TOKENS=2048",
        "VAL_LOSS_EVERY=0", "TRAIN_LOG_EVERY=0", "TRAIN_BATCH_TOKENS=2048", "TRAIN_SEQ_LEN=128",
        "GRAD_ACCUM_STEPS=1", "VAL_BATCH_SIZE=2048", "PGOLF_DEVICE=cpu", "PGOLF_COMPILE=0", "VOCAB_SIZE=1024",
        f"RUN_ID={run_id}", *(f"{k}={v}" for k, v in sizes.items()),
    ]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_trains_at_reduced_width(name, shared_data, tmp_path):
    m = resolve_preset(name).model
    shrink(m)
    cfg = build_config(name, training_overrides(shared_data, "r", m), environ={})
    results = train(cfg, runs_dir=tmp_path, echo=False)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if r["event"] == "train"]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3, losses
    assert results["pre_quant"]["val_loss"] < losses[0]


def test_every_option_trains(shared_data, tmp_path):
    m = tiny_cfg(**ALL_ON)
    sets = [f"model.{k}={v}" for k, v in ALL_ON.items()]
    cfg = build_config("tiny_cpu", training_overrides(shared_data, "all", m) + sets, environ={})
    cfg.model.vocab_size = 1024
    train(cfg, runs_dir=tmp_path, echo=False)
    rows = [json.loads(line) for line in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if r["event"] == "train"]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3, losses


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
