"""Model properties: the reference's parameter count and key names, causality, tying, init."""

from __future__ import annotations

import torch

from pgolf.model.gpt import GPT, apply_dtype_policy, count_parameters
from pgolf.presets import resolve_preset

BLOCK_KEYS = [
    "attn_scale", "mlp_scale", "resid_mix", "attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight",
    "attn.proj.weight", "attn.q_gain", "mlp.fc.weight", "mlp.proj.weight",
]


def tiny_model(seed: int = 0, **changes) -> GPT:
    cfg = resolve_preset("tiny_cpu").model
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():  # leave the zero/identity init so every path carries signal
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_baseline_parameter_count_is_the_reference_count():
    assert count_parameters(GPT(resolve_preset("baseline").model)) == 17_059_912


def test_state_dict_keys_are_the_reference_keys():
    keys = set(GPT(resolve_preset("baseline").model).state_dict())
    expected = {"tok_emb.weight", "skip_weights"} | {f"blocks.{i}.{k}" for i in range(9) for k in BLOCK_KEYS}
    assert keys == expected


def test_shapes_of_the_baseline():
    sd = GPT(resolve_preset("baseline").model).state_dict()
    assert sd["tok_emb.weight"].shape == (1024, 512)
    assert sd["blocks.0.attn.c_k.weight"].shape == (256, 512)  # 4 KV heads x 64
    assert sd["blocks.0.mlp.fc.weight"].shape == (1024, 512)
    assert sd["skip_weights"].shape == (4, 512)
    assert sd["blocks.0.resid_mix"].shape == (2, 512)


def test_output_projections_start_at_zero_and_embedding_std():
    model = GPT(resolve_preset("baseline").model)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.proj.weight) == 0 and torch.count_nonzero(block.mlp.proj.weight) == 0
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 0.0005


def test_causality_changing_a_later_token_never_changes_earlier_outputs():
    model = tiny_model().eval()
    x = torch.randint(0, model.cfg.vocab_size, (2, 48))
    base = model.logits(x)
    for t in (0, 10, 30, 46):
        x2 = x.clone()
        x2[:, t + 1] = (x2[:, t + 1] + 7) % model.cfg.vocab_size
        out = model.logits(x2)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        assert not torch.equal(out[:, t + 1 :], base[:, t + 1 :])


def test_tied_head_is_the_embedding():
    model = tiny_model()
    assert model.lm_head is None
    x = torch.randint(0, model.cfg.vocab_size, (1, 16))
    with torch.no_grad():
        model.tok_emb.weight[5].add_(1.0)
    expected = model.cfg.logit_softcap * torch.tanh(
        model.hidden(x) @ model.tok_emb.weight.T / model.cfg.logit_softcap
    )
    assert torch.allclose(model.logits(x), expected, atol=1e-6)
    untied = tiny_model(tie_embeddings=False)
    assert untied.lm_head is not None and "lm_head.weight" in untied.state_dict()


def test_per_token_loss_mean_equals_mean_loss():
    model = tiny_model().eval()
    x = torch.randint(0, model.cfg.vocab_size, (2, 32))
    y = torch.randint(0, model.cfg.vocab_size, (2, 32))
    per = model(x, y, reduction="none")
    assert per.shape == y.shape
    assert torch.allclose(per.mean(), model(x, y), atol=1e-6)


def test_logits_are_softcapped():
    model = tiny_model()
    with torch.no_grad():
        model.tok_emb.weight.mul_(1000)
    assert model.logits(torch.randint(0, 64, (1, 8))).abs().max() <= model.cfg.logit_softcap


def test_cpu_dtype_policy_is_fp32():
    model = tiny_model()
    apply_dtype_policy(model, torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
