"""``small=`` is one keep-float threshold for every scheme (the reference int8 rule included), and a
policy that quantizes nothing is said so; checked against the reference ``train_gpt.py``'s own
quantizer where the rule is the reference's."""

from __future__ import annotations


import pytest
import torch

from pgolf.model.gpt import GPT
from pgolf.presets import build_config
from pgolf.quant.int8 import KIND_PASSTHROUGH, KIND_PER_ROW, KIND_PER_TENSOR
from pgolf.quant.policy import quantize_state_dict_policy, quantized_count



@pytest.fixture(scope="module")
def reference(reference_script):
    return reference_script


def small_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "blocks.0.attn.c_q.weight": torch.randn(128, 128, generator=g),  # 16,384: under the reference's 65,536
        "blocks.0.mlp.fc.weight": torch.randn(256, 128, generator=g),
        "blocks.0.attn_scale": torch.randn(128, generator=g),
    }


@pytest.mark.parametrize("policy", ["int8,small=4096", "int8ref,small=4096", "attn=int8,mlp=int8ref,small=4096"])
def test_int8_rules_honour_small_with_the_reference_numerics(reference, policy):
    state = small_state()
    q = quantize_state_dict_policy(state, policy)
    for name in ("blocks.0.attn.c_q.weight", "blocks.0.mlp.fc.weight"):
        e = q.entry(name)
        codes, scale = reference.quantize_float_tensor(state[name])
        assert e.kind == KIND_PER_ROW and torch.equal(e.values, codes) and torch.equal(e.scale, scale), name
    assert q.entry("blocks.0.attn_scale").kind == KIND_PASSTHROUGH  # 128 elements <= 4096


def test_small_zero_sends_a_vector_to_the_reference_per_tensor_rule(reference):
    t = small_state()["blocks.0.attn_scale"]
    e = quantize_state_dict_policy({"blocks.0.attn_scale": t}, "int8,small=0").entry("blocks.0.attn_scale")
    codes, scale = reference.quantize_float_tensor(t)
    assert e.kind == KIND_PER_TENSOR and torch.equal(e.values, codes) and torch.equal(e.scale, scale)


def test_a_raised_small_keeps_a_large_vector_as_floats_under_a_low_bit_scheme():
    vec = torch.randn(70_000, generator=torch.Generator().manual_seed(4))
    assert quantize_state_dict_policy({"v": vec}, "int6").entry("v").kind == KIND_PER_TENSOR  # over 65,536: int8
    assert quantize_state_dict_policy({"v": vec}, "int6,small=100000").entry("v").kind == KIND_PASSTHROUGH


def test_the_demo_preset_quantizes_every_matrix_and_keeps_the_control_tensors():
    cfg = build_config("demo_cpu", environ={})
    state = GPT(cfg.model).state_dict()
    q = quantize_state_dict_policy(state, cfg.quant.scheme)
    matrices = [n for n, t in state.items() if t.ndim == 2 and min(t.shape) > 2]  # the linears and the embedding
    assert len(matrices) == 4 * 6 + 1
    assert {e.name for e in q if e.kind != KIND_PASSTHROUGH} == set(matrices)
    assert quantized_count(quantize_state_dict_policy(state, "int8")) == 0  # the reference's threshold: nothing
