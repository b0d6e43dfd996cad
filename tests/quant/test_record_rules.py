"""The records' own clip rules and keep-float choices, on one tensor each, against the records' code:
``int6:ref`` is R15's (and PR #160's) int6, ``int6:refmse`` R22's GPTQ-lite, ``keep=fp16`` their
fp16 small tensors, a glob rule reaches a small tensor (R44's int8 gates)."""

from __future__ import annotations

import pytest
import torch

from pgolf.quant.int8 import KIND_INTN, KIND_PASSTHROUGH, dequantize
from pgolf.quant.lowbit import parse_scheme, quantize_weight
from pgolf.quant.policy import parse_policy, quantize_state_dict_policy


def _weights(seed: int, rows: int = 96, cols: int = 256, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * scale


@pytest.mark.parametrize("scale", [0.02, 3.0])  # under the 1/31 floor, and above it
def test_ref_rule_is_r15s_int6(oracle, scale):
    r15 = oracle("R15_smeargate_orthoinit_muonwd/train_gpt_v5.py")
    w = _weights(0, scale=scale)
    q, s = r15.quantize_float_tensor(w)
    codes, s16 = quantize_weight(w, parse_scheme("int6:ref"))
    assert torch.equal(codes, q) and torch.equal(s16, s)


@pytest.mark.parametrize("bits", [6, 8])
def test_ref_rule_is_pr160s_at_its_bits(oracle, bits):
    pr160 = oracle("PR160_mlp3x_int8emb_seq2048/train_gpt.py")
    w = _weights(1, scale=2.0)
    q, s = pr160.quantize_float_tensor(w, bits=bits)
    codes, s16 = quantize_weight(w, parse_scheme(f"int{bits}:ref"))
    assert torch.equal(codes, q) and torch.equal(s16, s)


@pytest.mark.parametrize("scale", [0.05, 4.0])
def test_refmse_rule_is_r22s_gptq_lite(oracle, scale):
    r22 = oracle("R22_leakyrelu_ttt_parallel_muon/train_gpt.py")
    w = _weights(2, scale=scale)
    w[3, 7] = 40 * scale  # an outlier row: the percentiles differ
    q, s = r22.quantize_int6_per_row(w)
    codes, s16 = quantize_weight(w, parse_scheme("int6:refmse"))
    assert torch.equal(codes, q) and torch.equal(s16, s)


def test_keep_fp16_stores_control_tensors_as_fp16_and_a_glob_reaches_small_tensors():
    sd = {"blocks.0.attn_scale": torch.rand(512), "blocks.0.attn.attn_gate_w": _weights(3, 8, 12),
          "blocks.0.mlp.fc.weight": _weights(4, 512, 256)}
    ref = quantize_state_dict_policy(sd, "int6")
    assert ref.entry("blocks.0.attn_scale").values.dtype == torch.float32  # the reference rule: control in fp32
    q = quantize_state_dict_policy(sd, "*.attn_gate_w=int8:max,*=int6,keep=fp16")
    assert q.entry("blocks.0.attn_scale").values.dtype == torch.float16
    gate = q.entry("blocks.0.attn.attn_gate_w")
    assert gate.kind == KIND_INTN and gate.bits == 8  # 96 elements, under small=65,536, and still int8
    assert q.entry("blocks.0.mlp.fc.weight").kind == KIND_INTN
    assert dequantize(q)["blocks.0.attn_scale"].dtype == torch.float32
    named = quantize_state_dict_policy(sd, "blocks.0.attn_scale=fp16,*=int6")
    assert named.entry("blocks.0.attn_scale").kind == KIND_PASSTHROUGH
    assert named.entry("blocks.0.attn_scale").values.dtype == torch.float16
    p = parse_policy("*.attn_gate_w=int8:max,attn=int6:refmse,*=int6:ref,small=896,keep=fp16")
    assert parse_policy(str(p)) == p and p.keep_fp16 and p.small_numel == 896
